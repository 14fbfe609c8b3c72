"""voxq's HTTP API (FastAPI): read sessions and transcripts from the Redis bus, follow them live.

`create_app` in `api.app` builds the application; `voxq api` (in `api.cli`) serves it. The API
only reads what producers and workers wrote; it imports `voxq` and nothing imports it.
"""
