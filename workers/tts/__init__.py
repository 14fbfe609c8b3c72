"""Batch text-to-speech: RQ job functions, text splitting, MP3 joining and the result cache."""
