"""The FastAPI application: routers, error handlers, and one Redis client per app lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from api import errors, events, routes_health, routes_sessions, routes_tts
from api.auth import require_key
from api.state import ApiOptions, ApiState
from voxq import __version__
from voxq.keys import Keys
from voxq.redis_conn import connect, rq_url
from voxq.settings import Settings


def create_app(settings: Settings, redis_url: str,
               options: ApiOptions | None = None) -> FastAPI:
    """Build the API for one Redis; the client opens at startup and closes at shutdown.
    InvalidInput at once if the TTS queue has no usable Redis (a cluster without
    VOXQ_RQ_REDIS_URL)."""
    rq_url(settings, redis_url)
    state = ApiState(settings=settings, keys=Keys(settings.prefix), redis_url=redis_url,
                     options=options or ApiOptions())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.redis = connect(redis_url)
        try:
            yield
        finally:
            client, state.redis = state.redis, None
            await client.aclose()

    app = FastAPI(title="voxq API", version=__version__, lifespan=lifespan,
                  description="Sessions, transcripts and live events of voxq's Redis bus.")
    app.state.api = state
    errors.install(app)
    app.include_router(routes_health.router, tags=["health"])
    v1 = [Depends(require_key)]
    # /events and /transcript are registered before the catch-all `{session_id:path}` route.
    app.include_router(events.router, prefix="/v1", tags=["events"], dependencies=v1)
    app.include_router(routes_sessions.router, prefix="/v1", tags=["sessions"], dependencies=v1)
    app.include_router(routes_tts.router, prefix="/v1", tags=["tts"], dependencies=v1)
    return app
