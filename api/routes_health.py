"""Health probes: /healthz (process alive, never touches Redis) and /readyz (Redis answers)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.auth import Require, public
from api.models import ErrorOut, HealthOut
from api.state import ApiState, api_state
from voxq.access import Scope

router = APIRouter()


@router.get("/healthz", response_model=HealthOut, summary="Liveness",
            dependencies=[Depends(public)])
async def healthz() -> HealthOut:
    """200 while the process serves requests; no dependency is consulted."""
    return HealthOut(status="ok")


@router.get("/readyz", response_model=HealthOut, summary="Readiness",
            responses={503: {"model": ErrorOut, "description": "Redis is not reachable."}},
            dependencies=[Depends(public)])
async def readyz(state: Annotated[ApiState, Depends(api_state)]) -> HealthOut | JSONResponse:
    """200 if Redis answers PING within the deadline, else 503 with the reason."""
    limit = state.options.ready_timeout_seconds
    if state.redis is None:
        return JSONResponse({"detail": "not started"}, status_code=503)
    try:
        async with asyncio.timeout(limit):
            await state.redis.ping()
    except TimeoutError:
        return JSONResponse({"detail": f"Redis did not answer PING within {limit:g} s"},
                            status_code=503)
    except Exception as e:  # any failure to reach Redis means "not ready", never a crash
        return JSONResponse({"detail": f"Redis unreachable: {type(e).__name__}"},
                            status_code=503)
    return HealthOut(status="ready")


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            dependencies=[Depends(Require(Scope.METRICS_READ))])
async def metrics() -> Response:
    """Prometheus text exposition of this process's metrics: needs metrics:read (or admin)
    while authentication is on; VOXQ_API_METRICS_PORT serves them without a key."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
