"""The FastAPI application: routers, error handlers, and one Redis client per app lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from redis.exceptions import RedisError
from starlette.types import Receive, Scope, Send

from api import (
    errors,
    events,
    openapi,
    routes_access,
    routes_console,
    routes_health,
    routes_sessions,
    routes_tts,
    routes_webhooks,
)
from api.auth import declared
from api.hub import EventHub
from api.sse import run_detaching
from api.state import ApiOptions, ApiState
from api.webhooks import WebhookDispatcher
from voxq import __version__, redaction
from voxq.keys import Keys
from voxq.redis_conn import connect_bounded, rq_url
from voxq.sessions import backfill_tenant_index
from voxq.settings import Settings

log = logging.getLogger("voxq.api")
BACKFILL_SECONDS = 60.0  # the longest the once-per-deployment tenant backfill holds up startup


class VoxqApi(FastAPI):
    """The FastAPI app, whose live SSE streams run once its middleware and routing chain has
    returned (api.sse.run_detaching): thousands of followers do not each hold that chain."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await run_detaching(super().__call__, scope, receive, send)


def create_app(settings: Settings, redis_url: str,
               options: ApiOptions | None = None) -> FastAPI:
    """Build the API for one Redis; the client opens at startup and closes at shutdown.
    InvalidInput at once if the TTS queue has no usable Redis (a cluster without
    VOXQ_RQ_REDIS_URL)."""
    rq_url(settings, redis_url)
    redaction.install(settings)
    state = ApiState(settings=settings, keys=Keys(settings.prefix), redis_url=redis_url,
                     options=options or ApiOptions.from_settings(settings))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        opts = state.options
        state.redis = connect_bounded(redis_url, opts.redis_connections,
                                      opts.pool_timeout_seconds)
        state.hub = EventHub(redis_url, state.keys, state.redis, queue_limit=opts.queue_limit,
                             batch=opts.batch, block_ms=int(opts.poll_seconds * 1000),
                             status_check_seconds=opts.status_check_seconds,
                             tick_seconds=min(0.5, opts.keepalive_seconds / 3))
        # Followers' own reads (catch-up, the last finals) take at most all but two pooled
        # connections, so request routes and readiness always find one.
        state.follower_gate = asyncio.Semaphore(max(1, opts.redis_connections - 2))
        await _backfill(state)
        hub_task = asyncio.create_task(state.hub.run(), name="event-hub")
        dispatcher = hook_task = hooks_r = None
        if settings.webhook_secret is not None:
            # One connection of its own: a burst of deliveries never takes the routes' pool.
            hooks_r = connect_bounded(redis_url, 1, 30.0)
            dispatcher = WebhookDispatcher(hooks_r, state.keys, settings,
                                           poll_seconds=opts.webhook_poll_seconds,
                                           retry_base_seconds=settings.webhook_retry_base_seconds)
            hook_task = asyncio.create_task(dispatcher.run(), name="webhooks")
        try:
            yield
        finally:
            if dispatcher is not None and hook_task is not None \
                    and not await dispatcher.stop(hook_task):
                log.error("webhook delivery did not stop within 10 s of its cancellation")
            if hooks_r is not None:
                await hooks_r.aclose()
            if not await state.hub.stop(hub_task):
                log.error("the event hub did not stop within 10 s of its cancellation")
            state.hub = None
            client, state.redis = state.redis, None
            await client.aclose()

    app = VoxqApi(title="voxq API", version=__version__, lifespan=lifespan,
                  openapi_url=None, docs_url=None, redoc_url=None,
                  description="Sessions, transcripts and live events of voxq's Redis bus.")
    app.state.api = state
    errors.install(app)
    app.include_router(routes_health.router, tags=["health"])
    app.include_router(routes_console.router)  # the web console at / and /ui/…
    v1 = [Depends(declared)]  # a route that declares no scope is refused (fail closed)
    # /events and /transcript are registered before the catch-all `{session_id:path}` route.
    app.include_router(events.router, prefix="/v1", tags=["events"], dependencies=v1)
    app.include_router(events.ws_router, prefix="/v1")  # checks its credential itself
    app.include_router(routes_access.router, prefix="/v1", tags=["access"], dependencies=v1)
    app.include_router(routes_webhooks.router, prefix="/v1", tags=["webhooks"], dependencies=v1)
    app.include_router(routes_sessions.router, prefix="/v1", tags=["sessions"], dependencies=v1)
    app.include_router(routes_tts.router, prefix="/v1", tags=["tts"], dependencies=v1)
    openapi.install(app, settings)
    return app


async def _backfill(state: ApiState) -> None:
    """Put sessions from before tenants into the default tenant's index (once per deployment);
    a failure is logged and retried at the next start."""
    assert state.redis is not None
    try:
        async with asyncio.timeout(BACKFILL_SECONDS):
            added = await backfill_tenant_index(state.redis, state.keys)
    except (RedisError, TimeoutError) as e:  # a Redis hiccup must not stop the API
        with contextlib.suppress(RedisError):
            await state.redis.delete(state.keys.tenant_backfill)
        log.warning("tenant index backfill failed (%s); retried at the next start",
                    type(e).__name__)
        return
    if added:
        log.info("added %d sessions from before tenants to the default tenant's index", added)
