"""`assemblyai-v2`: AssemblyAI's legacy real-time API (v2, deprecated)."""
