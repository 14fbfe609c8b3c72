"""The OpenAPI document, made to say exactly what the API does.

FastAPI's generated document is a start; this fills in what it cannot know: every error answer
a route gives (401, 404, 409, 413, 416, 422, 503) with the one shape they all have
(`{"detail": reason}`, never FastAPI's list-shaped validation error), the request bodies the TTS
routes read themselves (self-contained, with one branch per vendor listing its voices and sample
rates), the session-id pattern, and bearer security only when a key is configured.
"""

from __future__ import annotations

import copy
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import BaseRoute

from api.auth import ANY, PUBLIC, Require, auth_on, authorize, required_scope
from api.json_body import JsonLimits
from api.routes_tts import TtsBatchRequest, batch_limits, single_limits
from api.sse import EVENT_ID_RE
from voxq import tts_offers
from voxq.keys import SESSION_ID_RE
from voxq.settings import Settings
from voxq.tts_jobs import TtsRequest

REF = "#/components/schemas/{model}"
ERROR_REF = {"$ref": "#/components/schemas/ErrorOut"}
SESSION_ID_PATTERN = f"^{SESSION_ID_RE.pattern}$"
EVENT_ID_PATTERN = rf"^\s*{EVENT_ID_RE.pattern}\s*$"  # the `id` of an event this API sent
NON_BLANK_TEXT = r"^[^\u0000]*[^\s\u0000][^\u0000]*$"  # some non-space character, and no NUL

ERRORS: dict[str, str] = {
    "401": "Missing or wrong API key or token (`Authorization: Bearer <key or token>`).",
    "403": "The key or token lacks the scope this route requires (`x-required-scope`).",
    "429": "Over the key's request rate, or the tenant's daily TTS quota (Retry-After).",
    "409": "The resource exists but is not in a state that allows this (see the reason).",
    "404": "No such resource (unknown, expired, or another tenant's).",
    "413": "The request body is too large (bytes, JSON values, text or batch items).",
    "416": "The requested byte range is outside the audio.",
    "422": "A malformed parameter or body; the reason names it.",
    "503": "Redis is unavailable, or too many live streams; retry later.",
}


def _errors_of(path: str, method: str) -> set[str]:
    """Error answers a route gives besides 401 (which depends on the key being set)."""
    if not path.startswith("/v1/"):
        return set()
    out = {"503"}
    if path.startswith("/v1/sessions"):
        out.add("422")  # the id pattern, paging, format, Last-Event-ID
    if path.startswith("/v1/sessions/"):
        out |= {"404", "409"}
    if method == "post":
        out |= {"413", "422"}
    if path.startswith("/v1/tts/") and method in ("get", "head"):
        out.add("404")
    if path.endswith("/audio"):
        out |= {"409", "416"}
    if path.endswith("/zip"):
        out.add("409")
    if path in ("/v1/keys", "/v1/audit") and method == "get":
        out.add("422")  # the tenant filter, paging
    if path.startswith("/v1/keys/"):
        out.add("404")
    if path == "/v1/keys" and method == "post":
        out.add("409")  # authentication is off
    if path == "/v1/tokens":
        out |= {"403", "409"}  # wider than the credential; tokens off
    return out


def vendor_branch(name: str | None, settings: Settings) -> dict[str, Any]:
    """What one vendor accepts (``None``: the request names no vendor, the default applies)."""
    offer = tts_offers.offer_of(name or settings.tts_default_vendor, settings)
    props: dict[str, Any] = {
        # "" and null both mean the vendor's default voice
        "voice": {"anyOf": [{"type": "string", "enum": ["", *offer.voices]}, {"type": "null"}]},
        "sample_rate": {"type": "integer", "enum": list(offer.sample_rates)},
    }
    controls = offer.controls
    for control in tts_offers.CONTROLS:  # only what differs from TtsRequest's own bounds
        if control not in controls:
            props[control] = {"type": "number", "enum": [1.0]}
        elif controls[control] != tts_offers.ACCEPTED[control]:
            props[control] = {"type": "number", "minimum": controls[control].min,
                              "maximum": controls[control].max}
    if name is None:
        return {"properties": {"vendor": {"type": "null"}, **props}, "title": "default vendor"}
    return {"properties": {"vendor": {"const": name}, **props}, "required": ["vendor"],
            "title": name}


def tts_request_schema(settings: Settings) -> dict[str, Any]:
    """TtsRequest as the API validates it: non-blank text within the limit, a known vendor,
    and the voices and rates of that vendor."""
    base = TtsRequest.model_json_schema(ref_template=REF)
    text = base["properties"]["text"]
    text.update(minLength=1, maxLength=settings.tts_max_text_chars, pattern=NON_BLANK_TEXT)
    text["description"] += (f" Not blank, no NUL; at most VOXQ_TTS_MAX_TEXT_CHARS "
                            f"({settings.tts_max_text_chars}) characters, longer is a 413.")
    base["properties"]["vendor"] = {
        "anyOf": [{"type": "string", "enum": tts_offers.speech_vendors()}, {"type": "null"}],
        "description": "Speech vendor; default VOXQ_TTS_DEFAULT_VENDOR "
                       f"({settings.tts_default_vendor}).", "default": None}
    base["properties"]["sample_rate"]["description"] += " One the vendor offers (see oneOf)."
    base["properties"]["voice"]["description"] += " One of the vendor's voices (see oneOf)."
    branches = [vendor_branch(None, settings)]
    branches += [vendor_branch(v, settings) for v in tts_offers.speech_vendors()]
    base["oneOf"] = branches
    return base


def _limits_note(limits: JsonLimits) -> str:
    return (f" Bodies over {limits.max_bytes} bytes or with more than {limits.max_values} JSON "
            f"values are a 413, nesting deeper than {limits.max_depth} levels a 422; checked "
            "while the body arrives.")


def _body(ref: str) -> dict[str, Any]:
    return {"required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def every_route(app: FastAPI) -> list[tuple[str, set[str], BaseRoute]]:
    """(full path, methods, route) of every route, included routers' too (methods empty for
    a WebSocket)."""
    out: list[tuple[str, set[str], BaseRoute]] = []
    for rc in iter_route_contexts(app.routes):
        route = rc.original_route
        methods = {str(m).lower() for m in getattr(route, "methods", None) or ()}
        out.append((str(rc.path_format or getattr(route, "path", "")), methods, route))
    return out


def route_scopes(app: FastAPI) -> dict[tuple[str, str], str]:
    """(path, method) -> what each HTTP route requires (a scope, ``any`` or ``public``)."""
    out: dict[tuple[str, str], str] = {}
    for path, methods, route in every_route(app):
        for method in methods:
            out[(path, method)] = required_scope(route) or "undeclared"
    return out


SECURITY_SCHEME = {"HTTPBearer": {"type": "http", "scheme": "bearer",
                                  "description": "An API key (voxq keys create) or a browser "
                                                 "token (POST /v1/tokens)."}}
TOKEN_QUERY = {"name": "token", "in": "query", "required": False,
               "description": "A browser token (POST /v1/tokens), for clients that cannot send "
                              "headers (EventSource, <audio>).",
               "schema": {"anyOf": [{"type": "string"}, {"type": "null"}]}}


def truthful(doc: dict[str, Any], settings: Settings, auth: bool | None = None,
             scopes: dict[tuple[str, str], str] | None = None,
             token_routes: frozenset[tuple[str, str]] = frozenset()) -> dict[str, Any]:
    """FastAPI's document corrected to match the API's behaviour (see the module docstring);
    ``auth``: whether authentication is on (default: whether VOXQ_API_KEY is set)."""
    doc = copy.deepcopy(doc)
    if auth is None:
        auth = bool(settings.api_key and settings.api_key.get_secret_value())
    scopes = scopes or {}
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas["TtsRequest"] = tts_request_schema(settings)
    batch = TtsBatchRequest.model_json_schema(ref_template=REF)
    batch.pop("$defs", None)
    batch["properties"]["items"].update(maxItems=settings.tts_max_batch_items)
    batch["properties"]["items"]["description"] += (
        f" At most VOXQ_TTS_MAX_BATCH_ITEMS ({settings.tts_max_batch_items}); more is a 413.")
    schemas["TtsBatchRequest"] = batch
    if auth:
        doc["components"]["securitySchemes"] = SECURITY_SCHEME
    else:
        doc["components"].pop("securitySchemes", None)
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            need = scopes.get((path, method), "undeclared")
            op["x-required-scope"] = need
            guarded = need != "public"
            op.pop("security", None)
            if auth and guarded:
                op["security"] = [{"HTTPBearer": []}]
            if auth and (path, method) in token_routes:
                op.setdefault("parameters", []).append(dict(TOKEN_QUERY))
            if path == "/v1/tts" and method == "post":
                op["requestBody"] = _body("TtsRequest")
                op["description"] = op.get("description", "") + _limits_note(
                    single_limits(settings))
            if path == "/v1/tts/batch" and method == "post":
                op["requestBody"] = _body("TtsBatchRequest")
                op["description"] = op.get("description", "") + _limits_note(
                    batch_limits(settings))
            for param in op.get("parameters", []):
                if param["name"] == "session_id" and param["in"] == "path":
                    param["schema"].update(pattern=SESSION_ID_PATTERN, maxLength=128,
                                           minLength=1)
                if param["name"] == "last_event_id":
                    param["schema"] = {"anyOf": [{"type": "string", "pattern": EVENT_ID_PATTERN},
                                                 {"type": "null"}]}
            responses = op.setdefault("responses", {})
            codes = _errors_of(path, method) | ({"401", "403", "429"} if auth and guarded
                                                else set())
            if path in ("/v1/tts", "/v1/tts/batch") and method == "post":
                codes.add("429")  # the tenant's daily quota applies with auth off too
            for code in codes:
                entry = responses.setdefault(code, {"description": ERRORS[code]})
                entry["content"] = {"application/json": {"schema": ERROR_REF}}
            if "422" in responses and "422" not in codes:
                responses.pop("422")
    return doc


def _token_routes(app: FastAPI) -> frozenset[tuple[str, str]]:
    """HTTP routes that also take ``?token=``."""
    out = set()
    for path, methods, route in every_route(app):
        if isinstance(route, APIRoute):
            for dep in route.dependant.dependencies:
                if isinstance(dep.call, Require) and dep.call.query_token:
                    out |= {(path, m) for m in methods}
    return frozenset(out)


def install(app: FastAPI, settings: Settings) -> None:
    """Serve the corrected document at /openapi.json and Swagger UI at /docs (both built once
    per authentication state; behind a key when VOXQ_DOCS_PRIVATE is set and auth is on)."""
    built: dict[bool, dict[str, Any]] = {}

    def build(auth: bool | None = None) -> dict[str, Any]:
        if auth is None:
            auth = bool(settings.api_key and settings.api_key.get_secret_value())
        if auth not in built:
            raw = get_openapi(title=app.title, version=app.version, description=app.description,
                              routes=app.routes)
            built[auth] = truthful(raw, settings, auth, route_scopes(app), _token_routes(app))
        return built[auth]

    setattr(app, "openapi", build)  # noqa: B010  (FastAPI's documented override point)

    async def gate(request: Request) -> bool:
        """Whether auth is on; refuses the request when the docs are private."""
        state = request.app.state.api
        on = await auth_on(state)
        if on and settings.docs_private:
            await authorize(state, request, ANY, query_token=True)
        return on

    async def document(request: Request) -> JSONResponse:
        return JSONResponse(build(await gate(request)))

    async def swagger(request: Request) -> HTMLResponse:
        await gate(request)
        token = request.query_params.get("token")
        url = "/openapi.json" + (f"?token={quote(token)}" if token else "")
        return get_swagger_ui_html(openapi_url=url, title=f"{app.title} - docs")

    doc_route = APIRoute("/openapi.json", document, methods=["GET"], include_in_schema=False)
    docs_route = APIRoute("/docs", swagger, methods=["GET"], include_in_schema=False)
    for route in (doc_route, docs_route):
        setattr(route, "voxq_scope", ANY if settings.docs_private else PUBLIC)  # noqa: B010
        app.router.routes.append(route)

