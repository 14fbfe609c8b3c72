"""The web console: static HTML, CSS and JavaScript shipped in the package (``api/console/``),
served at ``/`` and ``/ui/…`` with a Content-Security-Policy that allows no other host.

The files are public (they hold no data); everything the page shows comes from /v1 with the
browser's own token. Nothing is built: the files in the package are the files served.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import RedirectResponse, Response

from api.auth import public

# public: the files hold no data; the page signs in for everything it reads
router = APIRouter(include_in_schema=False, dependencies=[Depends(public)])

#: Only this origin, for everything; no inline script or style, no frames, no plugins.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "media-src 'self' blob:; connect-src 'self'; form-action 'self'; base-uri 'none'; "
       "frame-ancestors 'none'")

MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
               ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml",
               ".ico": "image/x-icon"}


def security_headers() -> dict[str, str]:
    """Headers of every console response: the CSP, no sniffing, no referrer (a token in a URL
    never leaves in a Referer), no framing, revalidated on each load."""
    return {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
            "Cache-Control": "no-cache"}


@cache
def console_files() -> dict[str, bytes]:
    """Every console file by name, read once from the installed package."""
    root = files("api") / "console"
    return {f.name: f.read_bytes() for f in root.iterdir()
            if f.is_file() and any(f.name.endswith(ext) for ext in MEDIA_TYPES)}


def _file(name: str) -> Response:
    body = console_files().get(name)
    if body is None:
        raise HTTPException(404, f"no console file {name[:80]!r}")
    ext = name[name.rfind("."):]
    return Response(body, media_type=MEDIA_TYPES[ext], headers=security_headers())


@router.get("/")
async def index() -> Response:
    """The console's page."""
    return _file("index.html")


@router.get("/ui")
async def ui_root() -> RedirectResponse:
    """/ui itself: the page is at /."""
    return RedirectResponse("/", status_code=308)


@router.get("/ui/{name}")
async def asset(name: str) -> Response:
    """One of the console's scripts, styles or icons."""
    return _file(name)
