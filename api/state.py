"""What the routes share: settings, key schema, the one Redis client and the API's own limits."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from fastapi import Request

from voxq.keys import Keys
from voxq.settings import Settings


@dataclass(frozen=True, slots=True)
class ApiOptions:
    """Tunables of the API process (defaults fit production; tests shorten the timers)."""

    keepalive_seconds: float = 15.0  # SSE comment when nothing else was sent for this long
    poll_seconds: float = 1.0  # XREAD BLOCK per round; also how often status is checked
    max_streams: int = 1000  # concurrent /events streams (each holds one Redis connection)
    batch: int = 200  # stream entries read per round
    ready_timeout_seconds: float = 1.0  # /readyz PING deadline


@dataclass(slots=True)
class ApiState:
    """Per-app state; `redis` exists between lifespan startup and shutdown."""

    settings: Settings
    keys: Keys
    redis_url: str
    options: ApiOptions
    redis: aioredis.Redis | None = None
    live_streams: int = 0


def api_state(request: Request) -> ApiState:
    """The app's state (a FastAPI dependency)."""
    state: ApiState = request.app.state.api
    return state


def redis_of(state: ApiState) -> aioredis.Redis:
    """The shared client; RuntimeError if the lifespan has not started (a wiring bug)."""
    if state.redis is None:
        raise RuntimeError("the API's Redis client is not open: run the app's lifespan")
    return state.redis
