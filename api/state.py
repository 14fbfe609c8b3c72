"""What the routes share: settings, key schema, the one Redis client and the API's own limits."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import redis.asyncio as aioredis
from fastapi import Request

from api.hub import EventHub
from voxq.keys import Keys
from voxq.settings import Settings


@dataclass(frozen=True, slots=True)
class ApiOptions:
    """Tunables of the API process (defaults fit production; tests shorten the timers)."""

    keepalive_seconds: float = 15.0  # SSE comment when nothing else was sent for this long
    poll_seconds: float = 1.0  # XREAD BLOCK per round; also how often status is checked
    max_streams: int = 5000  # concurrent live followers (SSE, WebSocket, firehose) per process
    batch: int = 200  # stream entries read per round
    ready_timeout_seconds: float = 1.0  # /readyz PING deadline
    redis_connections: int = 8  # the route pool's size (the hub's reader has one of its own)
    pool_timeout_seconds: float = 5.0  # a route waits this long for a pooled connection
    queue_limit: int = 1000  # events queued per follower before it is cut off as too slow
    status_check_seconds: float = 5.0  # the hub's safety-net check of followed sessions' status
    webhook_poll_seconds: float = 0.5  # how often new end events and due deliveries are read

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiOptions:
        """The production options, with the limits VOXQ_API_* set."""
        return cls(max_streams=settings.api_max_followers,
                   redis_connections=settings.api_redis_connections,
                   queue_limit=settings.api_follower_queue)


@dataclass(slots=True)
class ApiState:
    """Per-app state; `redis` exists between lifespan startup and shutdown."""

    settings: Settings
    keys: Keys
    redis_url: str
    options: ApiOptions
    redis: aioredis.Redis | None = None
    hub: EventHub | None = None
    follower_gate: asyncio.Semaphore | None = None  # followers' share of the route pool
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
