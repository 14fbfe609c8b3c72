"""AssemblyAI streaming recognition: Universal Streaming v3 (`assemblyai`) and the legacy
real-time v2 API (`assemblyai-v2`), each a pure ``protocol.py`` plus an adapter ``stt.py`` (v2 in ``v2/``)."""
