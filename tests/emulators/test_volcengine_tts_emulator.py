"""The Volcengine TTS emulator is strict: hand-built frames (the notes' worked bytes, not voxq's
codec) walk v1 and v3, and each §5 checklist violation gets the documented code and a close."""

from __future__ import annotations

import gzip
import json
import struct
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.emulators.tts_audio import speech_seconds
from tests.emulators.volcengine_tts import (
    ACCESS_TOKEN,
    API_KEY,
    APP_ID,
    GRANT_NOT_FOUND,
    EmulatorConfig,
    VolcengineTtsEmulator,
)
from workers.tts import mp3join

V1_AUTH = {"Authorization": f"Bearer;{ACCESS_TOKEN}"}
V3_AUTH = {"X-Api-App-Key": APP_ID, "X-Api-Access-Key": ACCESS_TOKEN, "X-Api-Resource-Id": "seed-tts-1.0"}


@pytest.fixture
async def emu() -> AsyncIterator[VolcengineTtsEmulator]:
    async with VolcengineTtsEmulator(EmulatorConfig(chunk_bytes=512)) as e:
        yield e


def v1_body(**change: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "app": {"appid": APP_ID, "token": "access_token", "cluster": "volcano_tts"},
        "user": {"uid": "u1"},
        "audio": {"voice_type": "BV001_streaming", "encoding": "mp3", "rate": 24000, "speed_ratio": 1.0},
        "request": {"reqid": str(uuid.uuid4()), "text": "你好，世界。", "operation": "submit"}}
    for path, value in change.items():
        section, _, name = path.partition("__")
        if value is None:
            body[section].pop(name, None)
        else:
            body[section][name] = value
    return body


def full_request(body: Any, *, gzip_it: bool = True, header: bytes = b"\x11\x10\x11\x00") -> bytes:
    payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    if gzip_it:
        payload = gzip.compress(payload)
    else:
        header = header[:2] + b"\x10" + header[3:]
    return header + struct.pack(">I", len(payload)) + payload


def parse_error(frame: bytes) -> tuple[int, str]:
    assert frame[:4] == b"\x11\xf0\x10\x00", frame[:4].hex()
    code, size = struct.unpack_from(">II", frame, 4)
    assert len(frame) == 12 + size
    return code, frame[12:].decode()


async def v1_error(emu: VolcengineTtsEmulator, message: bytes | str, headers: dict[str, str] | None = None
                   ) -> tuple[int, str]:
    async with connect(emu.v1_url, additional_headers=V1_AUTH if headers is None else headers) as ws:
        await ws.send(message)
        error = parse_error(await ws.recv())  # type: ignore[arg-type]
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        return error


async def test_v1_happy_path_bytes(emu: VolcengineTtsEmulator) -> None:
    async with connect(emu.v1_url, additional_headers={"Authorization": f"Bearer; {ACCESS_TOKEN}"}) as ws:
        await ws.send(full_request(v1_body()))
        audio, sequences = bytearray(), []
        while True:
            frame = await ws.recv()
            assert isinstance(frame, bytes)
            (seq,) = struct.unpack_from(">i", frame, 4)
            (size,) = struct.unpack_from(">I", frame, 8)
            assert frame[:4] == (b"\x11\xb1\x00\x00" if seq > 0 else b"\x11\xb3\x00\x00")
            assert len(frame) == 12 + size
            sequences.append(seq)
            audio += frame[12:]
            if seq < 0:
                break
        with pytest.raises(ConnectionClosed):
            await ws.recv()  # one synthesis per connection
    n = len(sequences) - 1
    assert sequences == [*range(1, n + 1), -(n + 1)]
    assert mp3join.duration(bytes(audio)) == pytest.approx(speech_seconds("你好，世界。"), abs=0.002)


async def test_v1_query_is_one_final_frame_and_uncompressed_json_is_fine(emu: VolcengineTtsEmulator) -> None:
    async with connect(emu.v1_url, additional_headers=V1_AUTH) as ws:
        await ws.send(full_request(v1_body(request__operation="query"), gzip_it=False))
        frame = await ws.recv()
        assert isinstance(frame, bytes) and frame[:4] == b"\x11\xb3\x00\x00"
        assert struct.unpack_from(">i", frame, 4)[0] == -1
        assert mp3join.inspect(frame[12:]).frames > 0


async def test_v1_auth_is_answered_in_band(emu: VolcengineTtsEmulator) -> None:
    for headers in ({}, {"Authorization": f"Bearer {ACCESS_TOKEN}"}, {"Authorization": "Bearer; wrong"}):
        assert await v1_error(emu, full_request(v1_body()), headers) == (3001, GRANT_NOT_FOUND)
    assert await v1_error(emu, full_request(v1_body(app__appid="999"))) == (3001, GRANT_NOT_FOUND)


@pytest.mark.parametrize(("frame", "words"), [
    ("text frame", "text frames"),
    (b"\x11\x10", "shorter"),
    (b"\x21\x10\x11\x00\x00\x00\x00\x00", "version"),
    (b"\x12\x10\x11\x00\x00\x00\x00\x00\x00\x00\x00\x00", "version/header size"),
    (b"\x11\x10\x11\x00\x00\x00\x00\x05ab", "payload size"),
    (b"\x11\x10\x11\x00\x00\x00\x00\x03abc", "gzip"),
    (b"\x11\x10\x10\x00\x00\x00\x00\x03abc", "JSON"),
    (b"\x11\x20\x10\x00\x00\x00\x00\x02{}", "message type"),
    (b"\x11\x11\x10\x00\x00\x00\x00\x01\x00\x00\x00\x02{}", "flags"),
])
async def test_v1_framing_violations_are_3001(emu: VolcengineTtsEmulator, frame: bytes | str, words: str) -> None:
    code, message = await v1_error(emu, frame)
    assert code == 3001 and words in message


@pytest.mark.parametrize(("change", "code", "words"), [
    ({"app__cluster": None}, 3001, "app.cluster"),
    ({"app__token": ""}, 3001, "app.token"),
    ({"user__uid": None}, 3001, "user.uid"),
    ({"request__reqid": None}, 3001, "request.reqid"),
    ({"request__operation": "stream"}, 3001, "operation"),
    ({"audio__encoding": "flac"}, 3001, "encoding"),
    ({"audio__encoding": "wav"}, 3001, "wav cannot be streamed"),
    ({"audio__rate": 44100}, 3001, "rate"),
    ({"audio__speed_ratio": 5}, 3001, "speed_ratio"),
    ({"audio__pitch_ratio": 0.05}, 3001, "pitch_ratio"),
    ({"app__cluster": "volcano_mystery"}, 3001, "Init Engine Instance failed"),
    ({"request__text": "！？。"}, 3011, "illegal input text!"),
    ({"request__text": ""}, 3011, "illegal input text!"),
    ({"request__text": "好" * 342}, 3010, "too long"),
    ({"audio__voice_type": "BV999_streaming"}, 3050, "BV999_streaming"),
])
async def test_v1_request_validation(emu: VolcengineTtsEmulator, change: dict[str, Any], code: int,
                                     words: str) -> None:
    got, message = await v1_error(emu, full_request(v1_body(**change)))
    assert got == code and words in message


async def test_v1_reqid_reuse_concurrency_and_serial_only(emu: VolcengineTtsEmulator) -> None:
    body = v1_body()
    async with connect(emu.v1_url, additional_headers=V1_AUTH) as ws:
        await ws.send(full_request(body))
        async for frame in ws:
            if isinstance(frame, bytes) and struct.unpack_from(">i", frame, 4)[0] < 0:
                break
    assert await v1_error(emu, full_request(body)) == (3006, "reqid already used")
    emu.config.max_concurrent = 0
    assert (await v1_error(emu, full_request(v1_body())))[0] == 3003
    emu.config.max_concurrent = 4
    async with connect(emu.v1_url, additional_headers=V1_AUTH) as ws:
        await ws.send(full_request(v1_body(request__text="长" * 300)))
        await ws.send(full_request(v1_body()))
        codes = []
        with pytest.raises(ConnectionClosed):
            while True:
                frame = await ws.recv()
                if isinstance(frame, bytes) and frame[1] >> 4 == 0xF:
                    codes.append(parse_error(frame)[0])
        assert codes in ([], [3001])  # the second request either races the close or is refused


# --- v3 -------------------------------------------------------------------------------------------

def v3(event: int, payload: Any = None, session: str | None = None, header: bytes = b"\x11\x14\x10\x00") -> bytes:
    raw = b"{}" if payload is None else json.dumps(payload).encode()
    out = header + struct.pack(">i", event)
    if session is not None:
        out += struct.pack(">I", len(session.encode())) + session.encode()
    return out + struct.pack(">I", len(raw)) + raw


def parse_v3(frame: bytes) -> tuple[bytes, int, str, bytes]:
    """(header, event, id, payload) of a server frame."""
    (event,) = struct.unpack_from(">i", frame, 4)
    (n,) = struct.unpack_from(">I", frame, 8)
    ident = frame[12:12 + n].decode()
    (size,) = struct.unpack_from(">I", frame, 12 + n)
    payload = frame[16 + n:]
    assert len(payload) == size
    return frame[:4], event, ident, payload


def session_body(speaker: str = "zh_female_shuangkuaisisi_moon_bigtts", **audio: Any) -> dict[str, Any]:
    params = {"format": "mp3", "sample_rate": 24000, **audio}
    return {"user": {"uid": "u"}, "event": 100, "namespace": "BidirectionalTTS",
            "req_params": {"speaker": speaker, "audio_params": params}}


async def v3_open(ws: ClientConnection) -> None:
    start = v3(1)
    assert start == bytes.fromhex("11141000000000010000000" "27b7d")  # the notes' 14 worked bytes
    await ws.send(start)
    head, event, conn_id, payload = parse_v3(await ws.recv())  # type: ignore[arg-type]
    assert (head, event, payload) == (b"\x11\x94\x10\x00", 50, b"{}") and conn_id


async def v3_failed(ws: ClientConnection) -> tuple[int, int, str]:
    frame = await ws.recv()
    assert isinstance(frame, bytes)
    _, event, _, payload = parse_v3(frame)
    doc = json.loads(payload)
    with pytest.raises(ConnectionClosed):
        await ws.recv()
    return event, doc["status_code"], doc["message"]


async def test_v3_happy_path_event_order(emu: VolcengineTtsEmulator) -> None:
    sid = "nxckjoejnkeg"
    async with connect(emu.v3_url, additional_headers=V3_AUTH) as ws:
        await v3_open(ws)
        await ws.send(v3(100, session_body(), sid))
        assert parse_v3(await ws.recv())[1:3] == (150, sid)  # type: ignore[arg-type]
        await ws.send(v3(200, {**session_body(), "event": 200, "req_params": {"text": "一句。两句。"}}, sid))
        finish = v3(102, None, sid)
        assert finish == bytes.fromhex("11141000 00000066 0000000C 6E78636B6A6F656A6E6B6567 00000002 7B7D"
                                       .replace(" ", ""))  # the notes' worked FinishSession
        await ws.send(finish)
        order, audio = [], bytearray()
        while True:
            head, event, ident, payload = parse_v3(await ws.recv())  # type: ignore[arg-type]
            assert ident == sid
            order.append(event)
            if event == 352:
                assert head == b"\x11\xb4\x00\x00"
                audio += payload
            if event == 152:
                assert json.loads(payload) == {"status_code": 20000000, "message": "ok"}
                break
        assert order[0] == 350 and order[-2] == 351 and order.count(350) == 2 and 352 in order
        assert mp3join.duration(bytes(audio)) == pytest.approx(speech_seconds("一句。两句。"), abs=0.002)
        await ws.send(v3(2))
        assert parse_v3(await ws.recv())[1] == 52  # type: ignore[arg-type]


@pytest.mark.parametrize(("headers", "status", "words"), [
    ({"X-Api-App-Key": APP_ID, "X-Api-Access-Key": ACCESS_TOKEN}, 400, "get resource id empty"),
    ({"X-Api-Resource-Id": "seed-tts-1.0"}, 400, "app key not found"),
    ({"X-Api-App-Id": APP_ID, "X-Api-Resource-Id": "seed-tts-1.0"}, 400, "no token or access_key"),
    ({**V3_AUTH, "X-Api-Access-Key": "bad"}, 401, "45000010"),
    ({"X-Api-Key": "bad", "X-Api-Resource-Id": "seed-tts-1.0"}, 401, "45000010"),
    ({**V3_AUTH, "X-Api-Resource-Id": "volc.other"}, 403, "45000030"),
])
async def test_v3_handshake_refusals(emu: VolcengineTtsEmulator, headers: dict[str, str], status: int,
                                     words: str) -> None:
    with pytest.raises(InvalidStatus) as e:
        async with connect(emu.v3_url, additional_headers=headers):
            pass
    assert e.value.response.status_code == status and words in (e.value.response.body or b"").decode()
    async with connect(emu.v3_url, additional_headers={"X-Api-Key": API_KEY, "X-Api-Resource-Id": "seed-tts-2.0"}):
        pass


async def test_v3_framing_and_order_violations(emu: VolcengineTtsEmulator) -> None:
    async with connect(emu.v3_url, additional_headers=V3_AUTH) as ws:
        await ws.send(b"\x11\x10\x10\x00\x00\x00\x00\x02{}")  # no event flag
        assert parse_error(await ws.recv())[0] == 45000000  # type: ignore[arg-type]
    async with connect(emu.v3_url, additional_headers=V3_AUTH) as ws:
        await ws.send(v3(100, session_body(), "s1"))
        event, code, _ = await v3_failed(ws)
        assert (event, code) == (51, 45000000)
    for second in (v3(100, session_body(), "s2"), v3(200, {"req_params": {"text": "x"}}, "other"),
                   v3(102, None, "other")):
        async with connect(emu.v3_url, additional_headers=V3_AUTH) as ws:
            await v3_open(ws)
            await ws.send(v3(100, session_body(), "s1"))
            await ws.recv()
            await ws.send(second)
            assert (await v3_failed(ws))[:2] == (153, 45000001)
    async with connect(emu.v3_url, additional_headers=V3_AUTH) as ws:
        await v3_open(ws)
        await ws.send(v3(100, session_body(), ""))
        assert (await v3_failed(ws))[:2] == (153, 45000001)


@pytest.mark.parametrize(("body", "code", "words"), [
    ({**session_body(), "namespace": "Other"}, 45000001, "namespace"),
    ({"namespace": "BidirectionalTTS", "req_params": {"speaker": "x"}}, 45000001, "audio_params"),
    (session_body("zh_female_vv_uranus_bigtts"), 55000000, "mismatched"),
    (session_body("nobody_moon_bigtts"), 45000000, "permission"),
    (session_body(format="aac"), 45000001, "format"),
    (session_body(sample_rate=11025), 45000001, "sample_rate"),
    (session_body(speech_rate=101), 45000001, "speech_rate"),
    (session_body(loudness_rate=-51), 45000001, "loudness_rate"),
    ({**session_body(), "req_params": {**session_body()["req_params"],
                                       "additions": '{"post_process": {"pitch": 13}}'}}, 45000001, "pitch"),
])
async def test_v3_start_session_validation(emu: VolcengineTtsEmulator, body: dict[str, Any], code: int,
                                           words: str) -> None:
    async with connect(emu.v3_url, additional_headers=V3_AUTH) as ws:
        await v3_open(ws)
        await ws.send(v3(100, body, "s1"))
        event, got, message = await v3_failed(ws)
        assert (event, got) == (153, code) and words in message


async def test_v3_text_limits_and_cancel(emu: VolcengineTtsEmulator) -> None:
    async with connect(emu.v3_url, additional_headers=V3_AUTH) as ws:
        await v3_open(ws)
        await ws.send(v3(100, session_body(), "s1"))
        await ws.recv()
        await ws.send(v3(101, None, "s1"))
        assert parse_v3(await ws.recv())[1] == 151  # type: ignore[arg-type]
        await ws.send(v3(100, session_body(), "s2"))  # a new session after the cancel
        assert parse_v3(await ws.recv())[1] == 150  # type: ignore[arg-type]
        await ws.send(v3(102, None, "s2"))
        assert (await v3_failed(ws))[1] == 45000001  # nothing to say
    async with connect(emu.v3_url, additional_headers=V3_AUTH) as ws:
        await v3_open(ws)
        await ws.send(v3(100, session_body(), "s1"))
        await ws.recv()
        await ws.send(v3(200, {"req_params": {"text": "好" * 342}}, "s1"))
        assert (await v3_failed(ws))[1] == 40402003
