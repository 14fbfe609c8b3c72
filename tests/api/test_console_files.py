"""The web console's files as `voxq api` serves them: a strict Content-Security-Policy on every
one, nothing that reaches another host, nothing inline the policy would block, installed as
package data, and small."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import httpx
import pytest

from api.routes_console import CSP, console_files

ROOT = Path(__file__).resolve().parents[2]
BUDGET = 150_000  # bytes, uncompressed, every file together
URL = re.compile(r"(?:https?|wss?)://[^\s\"'<>()`]*", re.IGNORECASE)
ASSET = re.compile(r"""(?:src|href)="(/ui/[^"]+)\"""")


def test_every_file_is_small_together() -> None:
    files = console_files()
    assert {"index.html", "console.css", "console.js"} <= set(files)
    total = sum(len(b) for b in files.values())
    print(f"\nconsole: {total} bytes in {len(files)} files (budget {BUDGET})")
    assert total < BUDGET


@pytest.mark.parametrize("name", sorted(console_files()))
def test_no_file_names_another_host(name: str) -> None:
    text = console_files()[name].decode()
    assert URL.findall(text) == [], f"{name} names an absolute URL"
    assert not re.search(r"""(?:src|href|action)=["']//""", text), f"{name} has a protocol-relative URL"
    assert "@import" not in text and "url(" not in text.replace("url()", ""), f"{name} loads a resource"


def test_page_has_nothing_inline_that_the_policy_blocks() -> None:
    html = console_files()["index.html"].decode()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline script"
    assert "<style" not in html and " style=" not in html, "inline style"
    assert not re.search(r"\son[a-z]+=", html), "inline event handler"
    js = console_files()["console.js"].decode()
    assert "eval(" not in js and "new Function" not in js and "innerHTML" not in js


def test_every_file_is_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["api"]
    for name in console_files():
        assert any(fnmatch.fnmatch(f"console/{name}", p) for p in patterns), name
    on_disk = {p.name for p in (ROOT / "api" / "console").iterdir() if p.is_file()}
    assert on_disk == set(console_files()), "a console file is not served (unknown extension)"


async def test_served_with_the_policy(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assets = ASSET.findall(page.text)
    assert "/ui/console.js" in assets and "/ui/console.css" in assets
    for path in ["/", *assets]:
        r = await client.get(path)
        assert r.status_code == 200, path
        assert r.headers["content-security-policy"] == CSP
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
    assert (await client.get("/ui/console.js")).headers["content-type"].startswith("text/javascript")
    assert (await client.get("/ui/console.css")).headers["content-type"].startswith("text/css")
    directives = dict(d.strip().split(" ", 1) for d in CSP.split(";"))
    assert directives["default-src"] == "'none'"
    for d in ("script-src", "style-src", "connect-src"):
        assert directives[d] == "'self'", d


@pytest.mark.parametrize("path", ["/ui/nope.js", "/ui/..%2Fapp.py", "/ui/%2e%2e%2fcli.py", "/ui/routes_console.py"])
async def test_nothing_else_is_served(client: httpx.AsyncClient, path: str) -> None:
    r = await client.get(path)
    assert r.status_code == 404, (path, r.text[:200])


async def test_tts_vendors_list_voices_and_controls(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/tts/vendors")
    assert r.status_code == 200
    body = r.json()
    by_name = {v["name"]: v for v in body["vendors"]}
    assert body["default"] in by_name
    local = by_name["local"]
    assert local["voices"][0] == "en-us" and 24000 in local["sample_rates"]
    assert set(local["controls"]) == {"speed", "volume", "pitch"}
    assert local["controls"]["speed"] == {"min": 0.5, "max": 2.0, "default": 1.0}
    # Polly's neural engine (the default) refuses pitch before queueing: the form leaves it out
    assert "pitch" not in by_name["aws"]["controls"] and "speed" in by_name["aws"]["controls"]
