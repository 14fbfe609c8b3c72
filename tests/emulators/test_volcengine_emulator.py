"""The Volcengine sauc emulator is strict where the notes say the service is (handshake,
framing, request JSON, sequences, audio, timers) and answers with the documented frames."""

from __future__ import annotations

import contextlib
import gzip
import json
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from tests.emulators.common import interleave, silence, tone
from tests.emulators.volcengine_asr import (
    ACCESS_TOKEN,
    API_KEY,
    APP_ID,
    BASE_PATH,
    Fault,
    FrameProblem,
    VolcengineEmulator,
    parse_client_frame,
)
from voxq.aio import within
from workers.vendors.volcengine import frames as f
from workers.vendors.volcengine.frames import Frame, MessageType

REQUEST: dict[str, Any] = {
    "user": {"uid": "demo_uid"},
    "audio": {"format": "pcm", "codec": "raw", "rate": 16000, "bits": 16, "channel": 1},
    "request": {"model_name": "bigmodel", "show_utterances": True, "result_type": "full"}}
GOOD_HEADERS = {"X-Api-App-Key": APP_ID, "X-Api-Access-Key": ACCESS_TOKEN,
                "X-Api-Resource-Id": "volc.bigasr.sauc.duration",
                "X-Api-Connect-Id": "67ee89ba-7050-4c04-a3d7-ac61a63499b3"}


@pytest.fixture
async def emu() -> AsyncIterator[VolcengineEmulator]:
    """A running emulator; tests tweak its ``config`` and ``faults``."""
    async with VolcengineEmulator() as emulator:
        yield emulator


def open_ws(emu: VolcengineEmulator, mode: str = "bigmodel_async",
            headers: dict[str, str] | None = None) -> connect:
    return connect(f"ws://127.0.0.1:{emu.port}{BASE_PATH}/{mode}",
                   additional_headers=GOOD_HEADERS if headers is None else headers,
                   compression=None, ping_interval=None, open_timeout=5)


def request(**changes: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(REQUEST))
    for path, value in changes.items():
        section, _, key = path.partition("__")
        if value is None:
            doc[section].pop(key, None)
        else:
            doc[section][key] = value
    return doc


async def frame(ws: ClientConnection) -> Frame:
    """The next server frame, decoded by the client codec."""
    raw = await within(ws.recv(), 5)
    assert isinstance(raw, bytes), raw
    return f.decode(raw)


async def error_of(ws: ClientConnection) -> tuple[int, str]:
    """Skip answers up to the error frame; its code and message; then the server closes."""
    while True:
        raw = await within(ws.recv(), 5)
        assert isinstance(raw, bytes)
        if raw[:4] == bytes.fromhex("11f01000"):
            break
    err = f.decode(raw)
    with pytest.raises(ConnectionClosed):
        await within(ws.recv(), 5)
    return err.error_code or 0, err.error_message


async def begin(ws: ClientConnection, body: dict[str, Any] | None = None, sequence: int | None = 1,
                compress: bool = True) -> Frame:
    await ws.send(f.full_client_request(body or REQUEST, sequence=sequence, compress=compress))
    first = await frame(ws)
    assert first.type is MessageType.FULL_SERVER_RESPONSE and first.sequence == 1
    return first


async def answers_until_last(ws: ClientConnection) -> list[Frame]:
    out = []
    while True:
        fr = await frame(ws)
        out.append(fr)
        if fr.last:
            with pytest.raises(ConnectionClosed):
                await within(ws.recv(), 5)
            return out


# --- handshake ------------------------------------------------------------------------------------


async def test_handshake_checks_path_credentials_and_resource(emu: VolcengineEmulator) -> None:
    def without(name: str) -> dict[str, str]:
        return {k: v for k, v in GOOD_HEADERS.items() if k != name}

    cases: list[tuple[str, dict[str, str], int, str]] = [
        ("bigmodel_turbo", GOOD_HEADERS, 404, "not found"),
        ("bigmodel", without("X-Api-Access-Key"), 401, "load grant: requested grant not found"),
        ("bigmodel", {**GOOD_HEADERS, "X-Api-Access-Key": "nope"}, 401, "load grant"),
        ("bigmodel", without("X-Api-Resource-Id"), 400, "resourceId  is not allowed"),
        ("bigmodel", {**GOOD_HEADERS, "X-Api-Resource-Id": "volc.tts"}, 400,
         "resourceId volc.tts is not allowed"),
    ]
    for mode, headers, status, message in cases:
        with pytest.raises(InvalidStatus) as info:
            async with open_ws(emu, mode, headers):
                pass
        assert info.value.response.status_code == status
        assert message in json.loads(info.value.response.body)["header"]["message"]
    async with open_ws(emu) as ws:
        assert ws.response is not None
        assert ws.response.headers["X-Api-Connect-Id"] == GOOD_HEADERS["X-Api-Connect-Id"]
        assert ws.response.headers["X-Tt-Logid"]
    key_only = {"X-Api-Key": API_KEY, "X-Api-Resource-Id": "volc.seedasr.sauc.concurrent"}
    async with open_ws(emu, "bigmodel_nostream", key_only) as ws:
        await begin(ws)


# --- framing and the request ----------------------------------------------------------------------


def _gz_request(body: dict[str, Any]) -> bytes:
    return f.full_client_request(body)


BAD_FIRST_FRAMES: list[tuple[str, bytes | str, int, str]] = [
    ("text frame", json.dumps(REQUEST), 45000001, "text frames"),
    ("short", b"\x11\x10", 45000001, "shorter than the 4-byte header"),
    ("version 2", b"\x21" + _gz_request(REQUEST)[1:], 45000001, "version"),
    ("header size 2", b"\x12" + _gz_request(REQUEST)[1:], 45000001, "header size"),
    ("size mismatch", _gz_request(REQUEST) + b"x", 45000001, "payload size"),
    ("bad gzip", bytes.fromhex("11101100 00000003") + b"abc", 45000001, "gzip"),
    ("event flag", bytes.fromhex("11141000 00000001 00000002") + b"{}", 45000001, "flags"),
    ("not json", f.full_client_request(b"{nope"), 45000001, "payload unmarshal"),
    ("audio first", f.audio_only_request(silence(0.1)), 45000001, "first frame"),
    ("no format", _gz_request(request(audio__format=None)), 45000001, "audio.format"),
    ("no model", _gz_request(request(request__model_name=None)), 45000001, "model_name"),
    ("other model", _gz_request(request(request__model_name="small")), 45000001, "model_name"),
    ("result type", _gz_request(request(request__result_type="all")), 45000001, "result_type"),
    ("raw format", _gz_request(request(audio__format="raw")), 45000151, "unsupported format raw"),
    ("bad codec", _gz_request(request(audio__codec="aac")), 45000151, "codec"),
    ("ogg raw", _gz_request(request(audio__format="ogg")), 45000151, "codec"),
    ("8 kHz", _gz_request(request(audio__rate=8000)), 45000151, "rate"),
    ("24 bits", _gz_request(request(audio__bits=24)), 45000151, "bits"),
    ("3 channels", _gz_request(request(audio__channel=3)), 45000151, "channel"),
    ("negative seq", f.encode(Frame(MessageType.FULL_CLIENT_REQUEST, b"{}", sequence=-1),
                              check=False), 45000001, "positive"),
]


@pytest.mark.parametrize(("name", "data", "code", "text"), BAD_FIRST_FRAMES,
                         ids=[c[0] for c in BAD_FIRST_FRAMES])
async def test_bad_first_frames(emu: VolcengineEmulator, name: str, data: bytes | str, code: int,
                                text: str) -> None:
    async with open_ws(emu) as ws:
        await ws.send(data)
        got = await error_of(ws)
    assert got[0] == code and text in got[1], got
    assert emu.streams[0].error == got


def test_reserved_byte_and_the_emulator_parser_agree_with_the_codec() -> None:
    data = f.audio_only_request(b"\x01\x02", sequence=-4, last=True)
    parsed = parse_client_frame(data[:3] + b"\x7f" + data[4:])  # reserved byte unchecked
    assert (parsed.type, parsed.flags, parsed.sequence, parsed.payload) == (2, 3, -4, b"\x01\x02")
    with pytest.raises(FrameProblem):
        parse_client_frame(data[:-1])


@pytest.mark.parametrize(("frames_", "code", "text"), [
    ([_gz_request(REQUEST)], 45000001, "duplicate request"),
    ([f.audio_only_request(b"\x00\x00", sequence=3)], 45000001, "expected 2"),
    ([f.audio_only_request(b"\x00\x00", sequence=2),
      f.audio_only_request(b"", sequence=-4, last=True)], 45000001, "expected -3"),
    ([f.encode(Frame(MessageType.AUDIO_ONLY_REQUEST, b"", sequence=3, last=True), check=False)],
     45000001, "negative"),
    ([f.encode(Frame(MessageType.AUDIO_ONLY_REQUEST, b"", sequence=-2), check=False)],
     45000001, "positive"),
    ([f.audio_only_request(b"\x00", sequence=2)], 45000151, "odd"),
    ([f.audio_only_request(b"", sequence=-2, last=True)], 45000002, "empty audio"),
])
async def test_bad_audio_frames(emu: VolcengineEmulator, frames_: list[bytes], code: int,
                                text: str) -> None:
    async with open_ws(emu) as ws:
        await begin(ws)
        with contextlib.suppress(ConnectionClosed):
            for data in frames_:
                await ws.send(data)
        got = await error_of(ws)
    assert got[0] == code and text in got[1], got


async def test_sequence_order_is_switchable_but_signs_are_not(emu: VolcengineEmulator) -> None:
    emu.config.strict_sequence = False
    async with open_ws(emu) as ws:
        await begin(ws)
        await ws.send(f.audio_only_request(silence(0.1), sequence=7))
        await ws.send(f.audio_only_request(b"", sequence=-99, last=True))
        assert (await answers_until_last(ws))[-1].sequence == -2
    async with open_ws(emu) as ws:
        await begin(ws)
        await ws.send(f.encode(Frame(MessageType.AUDIO_ONLY_REQUEST, b"", sequence=0),
                               check=False))
        assert (await error_of(ws))[0] == 45000001


async def test_no_sequences_and_no_compression(emu: VolcengineEmulator) -> None:
    """The doc table's way: flags 0000 / 0010, plain JSON; answers mirror the compression."""
    pcm = tone(800, 0.3) + silence(0.4)
    async with open_ws(emu) as ws:
        await ws.send(f.full_client_request(REQUEST, compress=False))
        raw = await ws.recv()
        assert isinstance(raw, bytes) and raw[:4] == bytes.fromhex("11911000")
        await ws.send(f.audio_only_request(pcm, compress=False))
        await ws.send(f.audio_only_request(b"", last=True, compress=False))
        answers = await answers_until_last(ws)
    assert answers[-1].compression is f.Compression.NONE and (answers[-1].sequence or 0) < 0
    assert emu.streams[0].sequences == [None, None, None]


async def test_wav_needs_a_riff_header(emu: VolcengineEmulator) -> None:
    async with open_ws(emu) as ws:
        await begin(ws, request(audio__format="wav"))
        await ws.send(f.audio_only_request(silence(0.1), sequence=2))
        assert await error_of(ws) == (45000151, "invalid wav header")
    async with open_ws(emu) as ws:
        await begin(ws, request(audio__format="wav"))
        await ws.send(f.audio_only_request(b"RIFF\x24\x00\x00\x00WAVEfmt ", sequence=2))
        await ws.send(f.audio_only_request(b"", sequence=-3, last=True))
        await answers_until_last(ws)


async def test_timeout_concurrency_and_text_errors(emu: VolcengineEmulator) -> None:
    emu.config.packet_timeout = 0.3
    async with open_ws(emu) as ws:
        await begin(ws)
        assert await error_of(ws) == (45000081, "wait for next packet timeout (0.3 s)")
    emu.config.packet_timeout = 5
    emu.config.max_concurrent = 1
    async with open_ws(emu) as first, open_ws(emu) as second:
        assert (await error_of(second))[0] == 55000031
        await begin(first)
    emu.config.error_json = False
    async with open_ws(emu) as ws:
        await ws.send("hello")
        raw = await ws.recv()
    assert isinstance(raw, bytes)
    text = b"text frames are not part of the protocol"
    assert raw == bytes.fromhex("11f01000") + struct.pack(">II", 45000001, len(text)) + text


# --- answers --------------------------------------------------------------------------------------


async def stream_pcm(ws: ClientConnection, pcm: bytes, packet: int = 6400) -> list[Frame]:
    seq = 1
    for i in range(0, len(pcm), packet):
        seq += 1
        await ws.send(f.audio_only_request(pcm[i:i + packet], sequence=seq))
    await ws.send(f.audio_only_request(b"", sequence=-(seq + 1), last=True))
    return await answers_until_last(ws)


PCM = (silence(0.2) + tone(500, 0.3) + silence(0.1) + tone(1000, 0.2) + silence(0.5)
       + tone(2000, 0.3) + silence(0.2))


@pytest.mark.parametrize(("mode", "answers"), [("bigmodel", 10), ("bigmodel_async", 7),
                                               ("bigmodel_nostream", 1)])
async def test_cadence_by_mode(emu: VolcengineEmulator, mode: str, answers: int) -> None:
    async with open_ws(emu, mode) as ws:
        first = await begin(ws)
        got = await stream_pcm(ws, PCM)
    assert first.json() == {"audio_info": {"duration": 0}, "result": {"text": "",
                                                                      "utterances": []}}
    assert len(got) == answers  # one per packet (9 + the last) / on change / only the last
    assert [x.sequence for x in got] == [*range(2, answers + 1), -(answers + 1)]
    assert all(x.flags == 0b0001 for x in got[:-1]) and got[-1].flags == 0b0011
    last = got[-1].json()
    assert last["audio_info"] == {"duration": 1800}
    assert [(u["text"], u["start_time"], u["end_time"], u["definite"])
            for u in emu.streams[0].definite] == [
        ("tone500 tone1000.", 200, 800, True), ("tone2000.", 1300, 1600, True)]


async def test_full_and_single_results(emu: VolcengineEmulator) -> None:
    async with open_ws(emu, "bigmodel_async") as ws:
        await begin(ws)
        full = await stream_pcm(ws, PCM)
    async with open_ws(emu, "bigmodel_async") as ws:
        await begin(ws, request(request__result_type="single"))
        single = await stream_pcm(ws, PCM)
    assert [u["text"] for u in full[-1].json()["result"]["utterances"]] == \
        ["tone500 tone1000.", "tone2000."]
    assert full[-1].json()["result"]["text"] == "tone500 tone1000. tone2000."
    assert [u["text"] for u in single[-1].json()["result"]["utterances"]] == ["tone2000."]
    words = full[-1].json()["result"]["utterances"][0]["words"]
    assert words == [{"text": "tone500", "start_time": 200, "end_time": 500, "blank_duration": 0},
                     {"text": "tone1000", "start_time": 600, "end_time": 800,
                      "blank_duration": 0}]
    async with open_ws(emu, "bigmodel_async") as ws:
        await begin(ws, request(request__show_utterances=False))
        plain = await stream_pcm(ws, PCM)
    assert plain[-1].json()["result"] == {"text": "tone500 tone1000. tone2000."}


async def test_answers_mirror_gzip_and_stereo_is_mixed(emu: VolcengineEmulator) -> None:
    stereo = interleave(PCM, PCM)
    async with open_ws(emu) as ws:
        await begin(ws, request(audio__channel=2))
        await ws.send(f.audio_only_request(stereo[:25600], sequence=2))
        raw = await within(ws.recv(), 5)
        assert isinstance(raw, bytes) and raw[:4] == bytes.fromhex("11911100")
        assert gzip.decompress(raw[12:])[:1] == b"{"
        await ws.send(f.audio_only_request(stereo[25600:], sequence=3))
        await ws.send(f.audio_only_request(b"", sequence=-4, last=True))
        await answers_until_last(ws)
    assert [u["text"] for u in emu.streams[0].definite] == ["tone500 tone1000.", "tone2000."]


async def test_fault_knobs(emu: VolcengineEmulator) -> None:
    emu.faults.extend([Fault("http", status=503, code=55000000, message="unavailable"),
                       Fault("error", after_packets=2, code=55000031, message="busy"),
                       Fault("abort", after_packets=1)])
    with pytest.raises(InvalidStatus) as info:
        async with open_ws(emu):
            pass
    assert info.value.response.status_code == 503
    async with open_ws(emu) as ws:
        await begin(ws)
        await ws.send(f.audio_only_request(silence(0.2), sequence=2))
        await ws.send(f.audio_only_request(silence(0.2), sequence=3))
        assert await error_of(ws) == (55000031, "busy")
    async with open_ws(emu) as ws:
        await begin(ws)
        with pytest.raises(ConnectionClosedError) as closed:
            await ws.send(f.audio_only_request(silence(0.2), sequence=2))
            await within(ws.recv(), 5)
        assert closed.value.rcvd is None
    async with open_ws(emu) as ws:  # the queue is spent: a healthy stream
        await begin(ws)
        await stream_pcm(ws, silence(0.2))
