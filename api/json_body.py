"""Bounded JSON request bodies: size, nesting depth, value count and array length are checked
while the body streams in, before anything is built from it.

The body is parsed incrementally (ijson's C backend, no recursion) as each chunk arrives, so
one request costs the event loop at most one chunk's worth of parsing at a time: a body that is
too big, too deep (a RecursionError in a recursive parser), has too many values or too many
items in its list is refused at the first chunk that shows it, with Content-Length checked
before a byte is read. Chunked bodies without Content-Length are bounded the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import ijson
from fastapi import HTTPException, Request
from pydantic import BaseModel, ValidationError

from api.errors import validation_reason

# Events that start a JSON value (a container or a scalar).
_VALUE_EVENTS = frozenset({"start_map", "start_array", "string", "number", "boolean", "null"})


@dataclass(frozen=True, slots=True)
class JsonLimits:
    """What one route accepts: bytes, nesting depth, JSON values in all, and optionally the
    length of the list under one top-level key (``list_key``, e.g. ``items``)."""

    max_bytes: int
    max_values: int
    max_depth: int = 8
    list_key: str | None = None
    max_list_items: int | None = None
    list_too_long: str = "the list has more than {limit} items"


class _Builder:
    """Checks each parser event against the limits and builds the value (iteratively).

    Uses ijson's prefix-free events and keeps its own container stack, which the depth limit
    bounds: prefixes would cost quadratic memory on a deeply nested body before any check."""

    def __init__(self, limits: JsonLimits) -> None:
        self.limits = limits
        self.stack: list[list[Any]] = []  # [is_map, current key] per open container
        self.values = 0
        self.list_items = 0
        self.builder = ijson.ObjectBuilder()

    def _in_list(self) -> bool:
        s = self.stack
        return (len(s) == 2 and s[0][0] and s[0][1] == self.limits.list_key
                and not s[1][0])

    def feed(self, events: list[tuple[str, Any]]) -> None:
        lim = self.limits
        for event, value in events:
            if event in _VALUE_EVENTS:
                self.values += 1
                if self.values > lim.max_values:
                    raise HTTPException(413, f"request body has more than {lim.max_values} "
                                             "JSON values")
                if lim.list_key is not None and self._in_list():
                    self.list_items += 1
                    if lim.max_list_items is not None and self.list_items > lim.max_list_items:
                        raise HTTPException(413, lim.list_too_long.format(
                            limit=lim.max_list_items))
            if event in ("start_map", "start_array"):
                if len(self.stack) >= lim.max_depth:
                    raise HTTPException(422, f"request body is nested deeper than "
                                             f"{lim.max_depth} levels")
                self.stack.append([event == "start_map", None])
            elif event in ("end_map", "end_array"):
                self.stack.pop()
            elif event == "map_key":
                self.stack[-1][1] = value
            self.builder.event(event, value)


def _syntax_reason(e: Exception) -> str:
    """The parser's complaint without the excerpt of the body it quotes."""
    raw = e.args[0] if e.args else ""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    first = text.strip().splitlines()[0] if text.strip() else "invalid JSON"
    return f"request body is not valid JSON ({first[:80]})"


def declared_too_large(request: Request, limit: int) -> HTTPException | None:
    """413 when Content-Length alone says the body is over ``limit`` (nothing read yet)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        return HTTPException(413, f"request body is {declared.strip()} bytes; the limit is {limit}")
    return None


async def read_json(request: Request, limits: JsonLimits) -> Any:
    """The request's JSON body within ``limits``: 413 when too large (bytes, values, list
    items), 422 when not JSON or nested too deep; refused as soon as a chunk shows it."""
    too_large = declared_too_large(request, limits.max_bytes)
    if too_large is not None:
        raise too_large
    events = ijson.sendable_list()
    parser = ijson.basic_parse_coro(events, use_float=True)
    check = _Builder(limits)
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_bytes:
                raise HTTPException(413, f"request body is over the limit of "
                                         f"{limits.max_bytes} bytes")
            if chunk:
                parser.send(chunk)
                check.feed(events)
                del events[:]
        if size == 0:
            raise HTTPException(422, "request body is empty; a JSON object is required")
        parser.close()
        check.feed(events)
    except ijson.JSONError as e:
        raise HTTPException(422, _syntax_reason(e)) from None
    except UnicodeDecodeError:
        raise HTTPException(422, "request body is not valid JSON (not UTF-8)") from None
    return check.builder.value


M = TypeVar("M", bound=BaseModel)


async def read_model(request: Request, model: type[M], limits: JsonLimits) -> M:
    """The body read within ``limits`` and validated strictly (JSON types as documented);
    422 with the reason otherwise."""
    body = await read_json(request, limits)
    try:
        return model.model_validate(body, strict=True)
    except ValidationError as e:
        raise HTTPException(422, validation_reason(e)) from None
