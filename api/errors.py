"""Exception handlers: every failure answers JSON `{"detail": reason}`, never a traceback."""

from __future__ import annotations

import logging

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from voxq.errors import InvalidInput, InvalidSessionId, RedisUnavailable, UnknownSession
from voxq.metrics import REDIS_ERRORS

log = logging.getLogger("voxq.api")


def _error(code: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=code)


def validation_reason(exc: RequestValidationError) -> str:
    """FastAPI's list of validation errors as one readable sentence (without echoing input)."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


async def _on_validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _error(422, validation_reason(exc))


async def _on_bad_id(_: Request, exc: Exception) -> JSONResponse:
    return _error(422, str(exc))


async def _on_unknown(_: Request, exc: Exception) -> JSONResponse:
    return _error(404, str(exc))


async def _on_malformed(request: Request, exc: Exception) -> JSONResponse:
    # Client input is validated before it reaches the core, so this is a bad stored record.
    log.error("malformed record while serving %s: %s", request.url.path, exc)
    return _error(500, f"a stored record is malformed: {exc}")


async def _on_redis_down(request: Request, exc: Exception) -> JSONResponse:
    REDIS_ERRORS.labels("api").inc()
    log.warning("Redis unavailable while serving %s: %s", request.url.path, exc)
    return _error(503, "Redis is unavailable; retry later")


async def _on_crash(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error while serving %s", request.url.path, exc_info=exc)
    return _error(500, "internal error")


def install(app: FastAPI) -> None:
    """Register the handlers on `app`."""
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(InvalidSessionId, _on_bad_id)
    app.add_exception_handler(UnknownSession, _on_unknown)
    app.add_exception_handler(InvalidInput, _on_malformed)
    app.add_exception_handler(RedisUnavailable, _on_redis_down)
    app.add_exception_handler(redis.exceptions.ConnectionError, _on_redis_down)
    app.add_exception_handler(redis.exceptions.TimeoutError, _on_redis_down)
    app.add_exception_handler(Exception, _on_crash)
