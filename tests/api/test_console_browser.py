"""The web console in a real Chromium (Debian's, driven by Playwright) against real processes:
Redis, `voxq api`, a `voxq worker` on the AssemblyAI emulator (tones become exact words, one
stream per channel, growing turns as partials) and a `voxq tts-worker` with the local engine.

Each test saves a screenshot of every page it visits in the artifact directory
($VOXQ_TEST_ARTIFACTS/console, or the test's tmp path)."""

from __future__ import annotations

import asyncio
import io
import json
import time
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from api_process import api_process
from apitest_support import add_final, add_partial, set_status
from console_browser_support import Tab, artifact_dir, chromium, new_tab, shot

from tests.emulators.assemblyai_v3 import API_KEY, AssemblyAIV3Emulator
from tests.emulators.common import interleave, silence, tone
from tests.support import create, publish, start_worker, stop_process, wait_status
from tests.workers.tts.ttstest_support import start_tts_worker, stop_worker
from voxq.embedded_redis import free_port
from voxq.keys import Keys
from voxq.records import Status

pytestmark = pytest.mark.timeout(240)
RATE = 16000


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with chromium() as b:
        yield b


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return artifact_dir(tmp_path)


@pytest.fixture
def api_env(env: dict[str, str], prefix: str) -> dict[str, str]:
    """The API's environment: the test's Redis and prefix, its own TTS queue."""
    return {**env, "VOXQ_TTS_QUEUE": prefix}


@pytest.fixture
def api_url(api_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """`voxq api` as a process on a free port."""
    with api_process(api_env, tmp_path / "api.log") as (url, _):
        yield url


def call_audio() -> bytes:
    """Stereo: the agent (left) says two 500 Hz words, the customer (right) two 1200 Hz words,
    then the agent one more; every turn ends in more than the emulator's turn silence."""
    agent = (silence(0.5) + tone(500, 0.3) + silence(0.2) + tone(500, 0.3) + silence(2.7)
             + tone(500, 0.4) + silence(1.6))
    customer = silence(2.5) + tone(1200, 0.3) + silence(0.2) + tone(1200, 0.3) + silence(2.7)
    return interleave(agent, customer)


# Records what the transcript shows at every change, and where the transcript box sits.
OBSERVE = """() => {
  window.seen = [];
  window.boxTops = new Set();
  const list = document.querySelector('#transcript');
  const snap = () => {
    window.boxTops.add(Math.round(list.getBoundingClientRect().top));
    for (const li of list.children) window.seen.push({
      kind: li.classList.contains('final') ? 'final' : 'partial', seq: li.dataset.seq ?? null,
      who: li.querySelector('.who').textContent, text: li.querySelector('.text').textContent });
  };
  new MutationObserver(snap).observe(list, {subtree: true, childList: true, characterData: true, attributes: true});
}"""


UNLABELLED = """() => [...document.querySelectorAll('input, select, textarea, audio, button')]
    .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
    .map(e => e.id || e.outerHTML.slice(0, 80))"""


async def download(tab: Tab, selector: str) -> bytes:
    """Click a download link; the downloaded file's bytes."""
    async with tab.page.expect_download() as info:
        await tab.page.click(selector)
    dl = await info.value
    return await asyncio.to_thread(Path(await dl.path()).read_bytes)


async def test_live_call_appears_and_its_partials_become_finals_in_order(
        browser: Any, api_env: dict[str, str], r: aioredis.Redis, keys: Keys, out: Path,
        tmp_path: Path) -> None:
    async with AssemblyAIV3Emulator() as emu:
        worker_env = {**api_env, "ASSEMBLYAI_API_KEY": API_KEY, "VOXQ_ASSEMBLYAI_URL": emu.url,
                      "VOXQ_ASSEMBLYAI_TOKEN_URL": emu.token_url,
                      "VOXQ_ASSEMBLYAI_TEMPORARY_TOKENS": "false"}
        worker = start_worker(worker_env, "console-w", log=tmp_path / "worker.log")
        try:
            with api_process(api_env, tmp_path / "api.log") as (url, _):
                await _live_call(browser, url, r, keys, out, tmp_path)
        finally:
            await asyncio.to_thread(stop_process, worker)


async def _live_call(browser: Any, url: str, r: aioredis.Redis, keys: Keys, out: Path,
                     tmp_path: Path) -> None:
    tab = await new_tab(browser)
    page = tab.page
    await page.goto(url + "/")
    await page.wait_for_selector("#live-state.on")  # following the firehose
    assert "No calls yet" in await page.inner_text("#calls-empty")
    await shot(tab, out, "calls-empty")

    sid = "console-call-1"
    await create(r, keys, sid, vendor="assemblyai", channels=2, rate=RATE, language="en-US")
    # it appears live, without a reload, with its vendor
    await page.wait_for_selector(f'tr[data-session="{sid}"]:has-text("assemblyai")')
    await page.click(f'tr[data-session="{sid}"] a')
    await page.wait_for_selector("#call-meta dd")
    await page.evaluate(OBSERVE)

    feeder = asyncio.create_task(publish(r, keys, sid, call_audio(), channels=2, realtime=1.0))
    try:
        await page.wait_for_selector("#call-live:has-text('ended')", timeout=90_000)
    finally:
        await feeder
    meta = await wait_status(r, keys, sid, timeout=30)
    assert meta.status is Status.FINISHED, (meta.error, (tmp_path / "worker.log").read_text()[-3000:])

    async with httpx.AsyncClient(base_url=url, timeout=10) as api:
        stored = (await api.get(f"/v1/sessions/{sid}/transcript")).json()["segments"]
        texts = {f: (await api.get(f"/v1/sessions/{sid}/transcript", params={"format": f})).content
                 for f in ("txt", "srt", "vtt")}
    assert len(stored) >= 3
    by_start = sorted(stored, key=lambda s: (s["start"], s["seq"]))
    rows = await page.eval_on_selector_all("#transcript li", """els => els.map(li => ({
        kind: li.classList.contains('final') ? 'final' : 'partial', seq: li.dataset.seq,
        who: li.querySelector('.who').textContent, text: li.querySelector('.text').textContent,
        time: li.querySelector('.time').textContent}))""")
    # one timeline of finals, in time order, labelled by channel; no partial outlives the call
    assert [x["kind"] for x in rows] == ["final"] * len(stored)
    assert [x["text"] for x in rows] == [s["text"] for s in by_start]
    assert [x["who"] for x in rows] == [("customer" if s["channel"] == 1 else "agent") for s in by_start]
    for x in rows:
        words = x["text"].lower().replace(".", "").split()
        assert words and all(w == ("tone1200" if x["who"] == "customer" else "tone500") for w in words)
    assert [x["who"] for x in rows][:3] == ["agent", "customer", "agent"]

    seen = await page.evaluate("window.seen")
    partials = [s for s in seen if s["kind"] == "partial" and s["text"]]
    assert {s["who"] for s in partials} == {"agent", "customer"}, "partials were shown live"
    finals_texts: dict[str, set[str]] = {}
    for s in seen:
        if s["kind"] == "final":
            finals_texts.setdefault(s["seq"], set()).add(s["text"])
    # a final, once shown, never changed (no late partial overwrote it)
    assert all(len(t) == 1 for t in finals_texts.values()), finals_texts
    assert len(finals_texts) == len(stored)
    # each final was provisional first: some partial of its speaker was shown before it
    first_final = {}
    for i, s in enumerate(seen):
        if s["kind"] == "final":
            first_final.setdefault(s["seq"], (i, s["who"]))
    for seq, (i, who) in first_final.items():
        assert any(p["kind"] == "partial" and p["who"] == who for p in seen[:i]), seq
    assert len(await page.evaluate("[...window.boxTops]")) == 1, "the transcript box moved"

    # the metadata and the downloads are the API's own
    await page.wait_for_selector("#call-meta .badge.s-finished")  # re-read after the end
    meta_text = await page.inner_text("#call-meta")
    for value in ("finished", "assemblyai", "16000 Hz", "2 (agent, customer)"):
        assert value in meta_text
    for fmt, body in texts.items():
        assert await download(tab, f"#dl-{fmt}") == body, fmt
    assert [s["text"] for s in json.loads(await download(tab, "#dl-json"))["segments"]] == \
        [s["text"] for s in stored]

    # find in transcript: the customer's lines
    await page.fill("#find", "tone1200")
    customer = sum(1 for x in rows if x["who"] == "customer")
    await page.wait_for_function(
        f"() => document.querySelector('#find-count').textContent.includes('{customer} line')")
    assert await page.locator("#transcript mark").count() == 2 * customer
    await page.fill("#find", "")
    await page.locator("#find").blur()
    await shot(tab, out, "call")

    await page.click("text=All calls")
    await page.wait_for_selector(f'tr[data-session="{sid}"][data-status="finished"]')
    assert "1 call: 1 finished" in await page.inner_text("#calls-counts")
    await shot(tab, out, "calls")
    assert (tab.foreign, tab.csp_errors(), tab.errors, tab.failed) == ([], [], [], [])


async def test_tts_job_plays_and_a_batch_zips(
        browser: Any, api_env: dict[str, str], api_url: str, prefix: str, out: Path,
        tmp_path: Path) -> None:
    worker = start_tts_worker(api_env, queue=prefix, log=tmp_path / "tts-worker.log")
    try:
        tab = await new_tab(browser)
        page = tab.page
        await page.goto(api_url + "/#/tts")
        await page.wait_for_selector("#tts-form-vendor")
        assert await page.input_value("#tts-form-vendor") == "local"
        assert await page.input_value("#tts-form-voice") == "en-us"
        for control in ("speed", "volume", "pitch"):  # the local engine has all three
            assert await page.locator(f"label[for='tts-form-{control}']").count() == 1
        await page.fill("#tts-text", "Hello from the voxq console. This is the local engine.")
        await page.click("#tts-form button[type=submit]")
        await page.wait_for_selector("#tts-result:not([hidden])", timeout=120_000)
        duration = await page.wait_for_function("""() => {
            const a = document.querySelector('#tts-audio');
            return a.readyState >= 1 && isFinite(a.duration) && a.duration > 0 ? a.duration : null; }""")
        played = await duration.json_value()
        job_id = await page.inner_text("#tts-job-id")
        async with httpx.AsyncClient(base_url=api_url, timeout=10) as api:
            job = (await api.get(f"/v1/tts/{job_id}")).json()
        assert job["status"] == "finished" and job["duration"] > 1.0
        # the player decodes the same audio the job reports (MP3 frames: within a few of them)
        assert abs(played - job["duration"]) < 0.15, (played, job["duration"])
        await shot(tab, out, "tts")

        await page.click("nav >> text=Batch")
        await page.wait_for_selector("#batch-form-vendor")
        lines = ["First line of the batch.", "Second line.", "Third and last line."]
        await page.fill("#batch-lines", "\n".join(lines) + "\n\n")
        await page.click("#batch-form button[type=submit]")
        await page.wait_for_function(
            "() => document.querySelectorAll('#batch-body tr[data-status=finished]').length === 3",
            timeout=120_000)
        assert await page.locator("#batch-body tr").count() == 3
        assert "3 finished" in await page.inner_text("#batch-summary")
        await page.wait_for_selector("#batch-zip:not([hidden])")
        with zipfile.ZipFile(io.BytesIO(await download(tab, "#batch-zip"))) as zf:
            assert zf.namelist() == ["0001.mp3", "0002.mp3", "0003.mp3"]
        await shot(tab, out, "batch")
        assert await page.evaluate(UNLABELLED) == []  # every control of every view has a name
        # the same lines from a text file: the content cache answers, item by item
        await page.fill("#batch-lines", "")
        await page.set_input_files("#batch-file", files=[{
            "name": "lines.txt", "mimeType": "text/plain", "buffer": "\r\n".join(lines).encode()}])
        first_batch = await page.inner_text("#batch-id")
        await page.click("#batch-form button[type=submit]")
        await page.wait_for_function(
            f"() => document.querySelector('#batch-id').textContent !== '{first_batch}'")
        await page.wait_for_function(
            "() => document.querySelectorAll('#batch-body tr[data-status=finished]').length === 3")
        assert await page.locator("#batch-body tr").count() == 3
        assert [await page.inner_text(f"#batch-body tr:nth-child({i + 1}) td:nth-child(2)")
                for i in range(3)] == lines
        assert (tab.foreign, tab.errors, tab.failed) == ([], [], [])
    finally:
        await asyncio.to_thread(stop_worker, worker)


async def test_scrolling_up_stops_following_and_find_walks_matches(
        browser: Any, api_url: str, r: aioredis.Redis, keys: Keys, out: Path) -> None:
    sid = "console-long"
    await create(r, keys, sid, vendor="voxq-ws", channels=1, rate=RATE)
    await set_status(r, keys, sid, Status.ACTIVE)
    for i in range(40):
        await add_final(r, keys, sid, i, f"line {i} of a long call", i, i + 0.9)
    tab = await new_tab(browser, height=700)
    page = tab.page
    await page.goto(f"{api_url}/#/call/{sid}")
    await page.wait_for_function("() => document.querySelectorAll('#transcript li.final').length === 40")
    box = "document.querySelector('#transcript')"
    at_end = f"() => {box}.scrollHeight - {box}.scrollTop - {box}.clientHeight < 40"
    await page.wait_for_function(at_end)  # follows the newest line
    await page.evaluate(f"{box}.scrollTop = 0")
    await page.wait_for_selector("#jump:not([hidden])")
    await add_partial(r, keys, sid, "a provisional line", 40, 40.5)
    await add_final(r, keys, sid, 40, "line 40 of a long call", 40, 40.9)
    await page.wait_for_function("() => document.querySelectorAll('#transcript li.final').length === 41")
    assert await page.evaluate(f"{box}.scrollTop") == 0, "the reader's position was kept"
    await page.click("#jump")
    await page.wait_for_function(at_end)
    # a partial that comes after its final (a late hypothesis of words already final) is ignored
    await page.evaluate(OBSERVE)
    await add_partial(r, keys, sid, "late words of line 40", 40, 40.5, result_id="r40")
    await add_partial(r, keys, sid, "line 41 so far", 41, 41.4, result_id="r41")
    await page.wait_for_selector("#transcript li.partial:has-text('line 41 so far')")
    await add_final(r, keys, sid, 41, "line 41 of a long call", 41, 41.9)
    await page.wait_for_function("() => document.querySelectorAll('#transcript li.final').length === 42")
    assert not [x for x in await page.evaluate("window.seen") if "late words" in x["text"]]
    assert any(x["text"] == "line 41 so far" for x in await page.evaluate("window.seen"))
    assert await page.locator("#transcript li.partial").count() == 0  # replaced by its final
    await page.wait_for_function(at_end)  # following again

    await page.fill("#find", "line 1")  # line 1, 10-19
    await page.press("#find", "Enter")
    await page.wait_for_selector("#find-count:has-text('1 of 11 lines')")
    await page.press("#find", "Enter")
    assert "line 10 " in await page.inner_text("#transcript li.current")
    await page.press("#find", "Shift+Enter")
    await page.press("#find", "Shift+Enter")
    assert "line 19 " in await page.inner_text("#transcript li.current")
    await set_status(r, keys, sid, Status.FINISHED)
    await page.wait_for_selector("#call-live:has-text('ended: finished')")
    assert await page.locator("#transcript li.partial").count() == 0
    await shot(tab, out, "call-find")
    assert (tab.errors, tab.failed) == ([], [])


async def test_empty_and_error_states_and_small_screens(
        browser: Any, api_url: str, api_env: dict[str, str], r: aioredis.Redis, keys: Keys,
        out: Path, tmp_path: Path) -> None:
    tab = await new_tab(browser)
    page = tab.page
    await page.goto(f"{api_url}/#/call/no-such-call")
    await page.wait_for_selector("#call-error:has-text('No call with the id')")
    assert await page.locator("#call-live.on").count() == 0  # not "live"
    await shot(tab, out, "call-not-found")

    for i in range(25):
        await create(r, keys, f"small-{i:02d}", vendor="voxq-ws", channels=2, rate=RATE,
                     created=1_700_000_000 + i)
    await set_status(r, keys, "small-24", Status.FAILED, "vendor refused the audio: bad rate")
    # a phone, and a 1280×860 window at 200 % zoom (640×430 CSS pixels)
    for name, width, height in (("phone", 390, 844), ("zoom200", 640, 430)):
        small = await new_tab(browser, width=width, height=height)
        await small.page.goto(api_url + "/")
        await small.page.wait_for_selector('tr[data-session="small-24"]')
        assert "bad rate" in await small.page.inner_text('tr[data-session="small-24"]')
        await shot(small, out, f"calls-{name}")
        for view, ready in (("calls", '#calls-body tr'), ("call/small-24", "#call-meta dd"),
                            ("tts", "#tts-form-voice"), ("batch", "#batch-form-voice")):
            await small.page.goto(f"{api_url}/#/{view}")
            await small.page.wait_for_selector(ready)
            assert await small.page.evaluate(  # nothing wider than the window: no sideways scroll
                "document.documentElement.scrollWidth <= document.documentElement.clientWidth"), (name, view)
        await shot(small, out, f"batch-{name}")
    await page.goto(api_url + "/")
    await page.wait_for_selector('tr[data-session="small-24"]')  # newest first
    assert await page.locator("#calls-body tr").count() == 20
    assert "Page 1 of 2" in await page.inner_text("#page-info")
    await page.click("#page-next")
    assert await page.locator("#calls-body tr").count() == 5
    await page.select_option("#f-status", "failed")
    assert await page.locator("#calls-body tr").count() == 1
    await page.select_option("#f-status", "")
    await page.fill("#f-search", "small-0")
    assert await page.locator("#calls-body tr").count() == 10
    await page.fill("#f-search", "nothing-like-this")
    assert "No call matches" in await page.inner_text("#calls-empty")
    # keyboard: the first Tab reaches the skip link, Enter moves to the content, then the controls
    await page.reload()
    await page.wait_for_selector('tr[data-session="small-24"]')
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.textContent") == "Skip to content"
    await page.keyboard.press("Enter")
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.id") == "f-search"
    await page.keyboard.type("small-24")
    await page.keyboard.press("Tab")
    await page.keyboard.press("Tab")
    await page.keyboard.press("Tab")  # past the two filters, to the one row's link
    await page.keyboard.press("Enter")
    await page.wait_for_selector("#call-id:has-text('small-24')")
    await page.wait_for_selector("#call-meta .error:has-text('bad rate')")  # a failed call's reason

    # Redis down: an API on a port where nothing listens says so
    down = {**api_env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    with api_process(down, tmp_path / "api-down.log") as (url, _):
        await page.goto(url + "/")
        await page.wait_for_selector("#calls-empty:has-text('Redis is unavailable')", timeout=60_000)
        await shot(tab, out, "calls-redis-down")


async def test_sign_in_with_a_key_and_see_only_your_tenant(
        browser: Any, env: dict[str, str], prefix: str, r: aioredis.Redis, keys: Keys,
        out: Path, tmp_path: Path) -> None:
    admin = "console-admin-key-0123456789"
    api_env = {**env, "VOXQ_TTS_QUEUE": prefix, "VOXQ_API_KEY": admin}
    with api_process(api_env, tmp_path / "api.log") as (url, _):
        async with httpx.AsyncClient(base_url=url, timeout=10,
                                     headers={"Authorization": f"Bearer {admin}"}) as api:
            probe = await api.post("/v1/tokens", json={"ttl_seconds": 60})
            if probe.status_code == 404:
                pytest.skip("POST /v1/tokens is absent: access control (browser tokens, tenants) "
                            "is not in this build yet")
            assert probe.status_code == 201, probe.text
            secrets = {}
            for tenant in ("acme", "globex"):
                made = await api.post("/v1/keys", json={
                    "tenant": tenant, "scopes": ["sessions:read", "tts:read", "tts:write"],
                    "name": f"{tenant} console"})
                assert made.status_code == 201, made.text
                secrets[tenant] = made.json()["secret"]
        for tenant in ("acme", "globex"):
            for i in range(2):
                await create(r, keys, f"{tenant}-call-{i}", vendor="voxq-ws", rate=RATE,
                             tenant=tenant)
        minted: list[tuple[str, str]] = []  # (credential presented, token received)

        async def short_lived(route: Any) -> None:
            """The real token, announced as expiring in 62 s: its renewal is due in a few."""
            answer = await route.fetch()
            body = await answer.json()
            minted.append((route.request.headers.get("authorization", ""), body["token"]))
            body["expires_at"] = time.time() + 62
            await route.fulfill(response=answer, json=body)

        for tenant, other in (("acme", "globex"), ("globex", "acme")):
            tab = await new_tab(browser)
            page = tab.page
            await page.goto(url + "/")
            await page.wait_for_selector("#view-signin:not([hidden])")
            await shot(tab, out, f"signin-{tenant}")
            if tenant == "acme":
                await page.route("**/v1/tokens", short_lived)
            await page.fill("#signin-key", secrets[tenant])
            await page.click("#signin-form button[type=submit]")
            await page.wait_for_selector(f'tr[data-session="{tenant}-call-0"]')
            if tenant == "acme":  # renewed with the token itself, and the new one is used
                async with asyncio.timeout(30):
                    while len(minted) < 2:
                        await asyncio.sleep(0.2)
                assert minted[0][0] == f"Bearer {secrets[tenant]}"
                assert minted[1][0] == f"Bearer {minted[0][1]}"
                async with page.expect_request("**/v1/sessions/acme-call-1") as sent:
                    await page.goto(f"{url}/#/call/acme-call-1")
                assert (await sent.value).headers["authorization"] == f"Bearer {minted[-1][1]}"
                await page.goto(url + "/#/calls")
                await page.wait_for_selector(f'tr[data-session="{tenant}-call-0"]')
            await page.wait_for_selector("#live-state.on")
            shown = await page.eval_on_selector_all("#calls-body tr", "rows => rows.map(r => r.dataset.session)")
            assert {f"{tenant}-call-0", f"{tenant}-call-1"} <= set(shown)
            assert all(s.startswith(f"{tenant}-") for s in shown), shown
            # live: the firehose brings this tenant's new call, never the other's
            await create(r, keys, f"{other}-late-{tenant}", vendor="voxq-ws", rate=RATE, tenant=other)
            await create(r, keys, f"{tenant}-late-{tenant}", vendor="voxq-ws", rate=RATE, tenant=tenant)
            await page.wait_for_selector(f'tr[data-session="{tenant}-late-{tenant}"]')
            assert await page.locator(f'tr[data-session^="{other}-"]').count() == 0
            # the key is gone from the page: not in the DOM, not in any storage
            assert secrets[tenant] not in await page.content()
            assert await page.input_value("#signin-key") == ""
            stored = await page.evaluate("JSON.stringify([{...localStorage}, {...sessionStorage}])")
            assert secrets[tenant] not in stored
            # a transcript download goes with the token (in a header, not in the URL)
            await page.goto(f"{url}/#/call/{tenant}-call-0")
            await page.wait_for_selector("#call-meta dd")
            async with httpx.AsyncClient(base_url=url, timeout=10) as api:
                txt = await api.get(f"/v1/sessions/{tenant}-call-0/transcript?format=vtt",
                                    headers={"Authorization": f"Bearer {secrets[tenant]}"})
            assert txt.status_code == 200 and txt.text.startswith("WEBVTT")
            assert await download(tab, "#dl-vtt") == txt.content
            # another tenant's call is "not found"
            await page.goto(f"{url}/#/call/{other}-call-0")
            await page.wait_for_selector("#call-error:has-text('No call with the id')")
            assert await page.locator("#call-live.on").count() == 0  # nothing left of the last call
            await shot(tab, out, f"calls-{tenant}")
            assert tenant in await page.inner_text("#who")
            assert tab.foreign == []
        # a token the API refuses (expired, revoked): the page says so and asks to sign in again
        await page.route("**/v1/sessions/**", lambda route: route.fulfill(
            status=401, content_type="application/json", body='{"detail": "token expired"}'))
        await page.goto(f"{url}/#/call/{tenant}-call-1")
        await page.wait_for_selector("#banner:has-text('Session expired, sign in again')")
        assert not await page.locator("#call-body").is_visible()  # no other call's data
        await shot(tab, out, "session-expired")
        await page.click("#banner-action")
        await page.wait_for_selector("#view-signin:not([hidden])")
        assert await page.evaluate("document.activeElement.id") == "signin-key"
    # the keys' rate-limit buckets expire on their own; removed now so no later test sees keys vanish
    async for k in r.scan_iter(match=f"{keys.prefix}:ratelimit:*"):
        await r.delete(k)
