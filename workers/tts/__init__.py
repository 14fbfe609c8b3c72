"""Batch text-to-speech: RQ job functions, text splitting and MP3 joining (planning, the offers and
the result cache are the core's: voxq.tts_plan, voxq.tts_offers, voxq.tts_cache)."""
