"""Fixtures for the API tests: an app on the test Redis with its lifespan run by hand (httpx's
ASGITransport does not run it), and a real uvicorn server for the streaming tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from apitest_support import FAST, LiveServer, asgi_client, serve_in_thread

from api.app import create_app
from api.state import ApiOptions
from voxq.settings import Settings


@pytest.fixture
async def client(settings: Settings, redis_server: object) -> AsyncIterator[httpx.AsyncClient]:
    """A client on an app bound to the test Redis and prefix, auth off."""
    app = create_app(settings, settings.redis_url or "", options=FAST)
    async with asgi_client(app) as c:
        yield c


@pytest.fixture
def live_options() -> ApiOptions:
    """Options of the live server; tests override this fixture to tune timers and limits."""
    return FAST


@pytest.fixture
def live(settings: Settings, live_options: ApiOptions) -> Iterator[LiveServer]:
    """The API served by a real uvicorn on the test Redis."""
    yield from serve_in_thread(create_app(settings, settings.redis_url or "",
                                          options=live_options))
