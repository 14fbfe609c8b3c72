"""Fixtures of the ingest gateway tests: a gateway on the test Redis, with credentials."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from ingesttest_support import Running, gateway_settings, running

from voxq.settings import Settings


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[Running]:
    """A gateway in this process requiring the test key."""
    async with running(gateway_settings(settings)) as g:
        yield g
