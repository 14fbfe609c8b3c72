"""Workers: the transcriber (session claiming, one task per session) and TTS job functions."""
