"""Exception handlers: every failure answers JSON `{"detail": reason}`, never a traceback."""

from __future__ import annotations

import logging
import re
from typing import Any

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from voxq.errors import InvalidInput, InvalidSessionId, MalformedRecord, RedisUnavailable, UnknownSession
from voxq.metrics import REDIS_ERRORS

log = logging.getLogger("voxq.api")
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _error(code: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=code)


def validation_reason(exc: RequestValidationError | ValidationError) -> str:
    """FastAPI's or pydantic's list of validation errors as one readable sentence (without
    echoing input)."""
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


def short(reason: object, limit: int = 300) -> str:
    """A reason cut to ``limit`` characters (stored junk can make error texts long)."""
    text = str(reason)
    return text if len(text) <= limit else text[:limit] + "…"


async def _on_malformed(request: Request, exc: Exception) -> JSONResponse:
    # A record in Redis that a faulty or hostile producer wrote: the caller did nothing wrong,
    # and the resource exists but is in a state that cannot be shown (409, never a 500).
    log.warning("unreadable stored record while serving %s: %s", request.url.path, short(exc))
    return _error(409, f"a stored record cannot be read: {short(exc)}")


async def _on_invalid(_: Request, exc: Exception) -> JSONResponse:
    return _error(422, short(exc))


async def _on_disconnect(request: Request, _: Exception) -> JSONResponse:
    # The client left (or was cut off by a read timeout) while sending its body: nobody will
    # read an answer, and it is no server error.
    log.debug("client left while sending the body of %s", request.url.path)
    return _error(400, "client disconnected")


async def _on_redis_down(request: Request, exc: Exception) -> JSONResponse:
    REDIS_ERRORS.labels("api").inc()
    log.warning("Redis unavailable while serving %s: %s", request.url.path, exc)
    return _error(503, "Redis is unavailable; retry later")


async def _on_crash(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error while serving %s", request.url.path, exc_info=exc)
    return _error(500, "internal error")


def _template_re(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}]+\})", template)
    return re.compile("".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts))


def allowed_methods(request: Request) -> set[str]:
    """The documented methods of this path, from the OpenAPI document (Starlette's 405 names
    only the first route's, though GET and POST of one path may be two routes). A literal path
    wins over a template that happens to match it (/v1/tts/batch is not /v1/tts/{job_id})."""
    paths: dict[str, Any] = request.app.openapi().get("paths", {})
    path = request.scope["path"]
    ops = paths.get(path)
    if ops is None:
        ops = next((o for t, o in paths.items() if _template_re(t).fullmatch(path)), {})
    return {m.upper() for m in ops if m.upper() in METHODS}


async def _on_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405 and (methods := allowed_methods(request)):
        exc.headers = {**(exc.headers or {}), "Allow": ", ".join(sorted(methods))}
    return await http_exception_handler(request, exc)


def install(app: FastAPI) -> None:
    """Register the handlers on `app`."""
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(InvalidSessionId, _on_bad_id)
    app.add_exception_handler(UnknownSession, _on_unknown)
    app.add_exception_handler(MalformedRecord, _on_malformed)
    app.add_exception_handler(InvalidInput, _on_invalid)
    app.add_exception_handler(ClientDisconnect, _on_disconnect)
    app.add_exception_handler(RedisUnavailable, _on_redis_down)
    app.add_exception_handler(redis.exceptions.ConnectionError, _on_redis_down)
    app.add_exception_handler(redis.exceptions.TimeoutError, _on_redis_down)
    app.add_exception_handler(Exception, _on_crash)
