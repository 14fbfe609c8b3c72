"""A strict local emulator of Amazon Polly's SynthesizeSpeech (``POST /v1/speech``), for tests.

A real HTTP/1.1 server (asyncio streams, keep-alive, ``Content-Length`` bodies only) on a free
loopback port. Facts come from botocore's Polly model (rest-json, signing name ``polly``, the
operation's error shapes and statuses, the mp3 rates, the 6000/3000 character limits) and AWS's
common rest-json errors; where neither says, the choice is marked [U].

Checked in order, each failure one JSON error ``{"message": ...}`` with ``x-amzn-ErrorType``:
  * method/path other than ``POST /v1/speech`` → 404 ``UnknownOperationException`` [U];
  * SigV4: no ``Authorization`` → 403 ``MissingAuthenticationTokenException``; malformed →
    403 ``IncompleteSignatureException``; unknown access key → 403
    ``UnrecognizedClientException``; scope date/region/service wrong, ``X-Amz-Date`` more than
    5 min off, ``host``/``x-amz-date`` not signed, or a signature that botocore's own
    ``SigV4Auth`` (an implementation independent of the client's) does not reproduce → 403
    ``InvalidSignatureException``; with ``config.session_token`` the token must be sent and signed;
  * body not a JSON object → 400 ``SerializationException`` [U]; missing ``OutputFormat``,
    ``Text`` or ``VoiceId``, unknown members, or a value outside its enum (engine, format, text
    type, voice) → 400 ``ValidationException``;
  * a voice the engine does not offer → 400 ``EngineNotSupportedException``; a rate not valid
    for the format (mp3: 8000 16000 22050 24000 44100 48000) → 400 ``InvalidSampleRateException``;
  * SSML that is not well-formed ``<speak>``, uses unknown tags or prosody values, or pitch on a
    non-standard engine [U] → 400 ``InvalidSsmlException``; over 6000 characters, or over 3000
    billed (tags not counted) → 400 ``TextLengthExceededException``; nothing to speak → 400
    ``ValidationException`` [U];
  * over ``config.max_concurrent`` requests at once → 400 ``ThrottlingException`` (Polly's
    throttling status per the model).

Success: 200 ``audio/mpeg`` with ``x-amzn-RequestCharacters`` and ``x-amzn-RequestId``; the
body is a real MP3 tone (:mod:`tests.emulators.tts_audio`) lasting 20 ms per word character of
the spoken text divided by the SSML prosody rate. Each voice gets its own tone frequency.

Fault knobs: ``emulator.faults`` is a queue, one :class:`Fault` per request after
authentication: an error answer (any status/type), a dropped connection, a delay, or a 200 whose
body is not MP3. ``config.delay`` slows every success. Every request is logged in
``emulator.requests``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
import xml.etree.ElementTree as ET
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from pydantic import SecretStr

from tests.emulators.common import LOOPBACK
from tests.emulators.tts_audio import mp3_tone, speech_seconds
from voxq.aio import within
from voxq.settings import Settings

ACCESS_KEY = "AKIAVOXQPOLLYEMULATOR"
SECRET_KEY = "voxq/polly/emulator/secret/key/0000000000"
REGION = "eu-west-1"
ENGINES = ("standard", "neural", "long-form", "generative")
FORMATS = ("json", "mp3", "ogg_opus", "ogg_vorbis", "pcm", "mulaw", "alaw")
FORMAT_RATES = {"mp3": {"8000", "16000", "22050", "24000", "44100", "48000"},
                "ogg_vorbis": {"8000", "16000", "22050", "24000", "44100", "48000"},
                "pcm": {"8000", "16000"}, "ogg_opus": {"48000"}, "mulaw": {"8000"},
                "alaw": {"8000"}}
NEURAL = frozenset({
    "Joanna", "Matthew", "Danielle", "Gregory", "Ivy", "Kendra", "Kimberly", "Salli",
    "Joey", "Justin", "Kevin", "Ruth", "Stephen", "Amy", "Emma", "Brian", "Arthur",
    "Olivia", "Aria", "Ayanda", "Niamh", "Kajal", "Vicki", "Daniel", "Hannah", "Lea",
    "Remi", "Gabrielle", "Liam", "Lucia", "Sergio", "Mia", "Andres", "Lupe", "Pedro",
    "Bianca", "Adriano", "Camila", "Vitoria", "Thiago", "Ines", "Laura", "Takumi", "Kazuha",
    "Tomoko", "Seoyeon", "Zhiyu", "Hiujin", "Hala", "Zayd", "Elin", "Ida", "Suvi", "Ola",
    "Sofie", "Lisa", "Isabelle", "Burcu", "Jitka"
})
STANDARD = frozenset({
    "Joanna", "Matthew", "Ivy", "Justin", "Kendra", "Kimberly", "Salli", "Joey", "Amy",
    "Brian", "Emma", "Russell", "Nicole", "Raveena", "Aditi", "Geraint", "Celine",
    "Mathieu", "Chantal", "Marlene", "Vicki", "Hans", "Conchita", "Enrique", "Lucia", "Mia",
    "Miguel", "Penelope", "Lupe", "Carla", "Bianca", "Giorgio", "Mizuki", "Takumi",
    "Seoyeon", "Zhiyu", "Lotte", "Ruben", "Liv", "Naja", "Mads", "Maja", "Jacek", "Jan",
    "Ewa", "Ines", "Cristiano", "Camila", "Vitoria", "Ricardo", "Carmen", "Tatyana",
    "Maxim", "Astrid", "Filiz", "Gwyneth", "Dora", "Karl", "Zeina"
})
GENERATIVE = frozenset({
    "Ruth", "Matthew", "Danielle", "Stephen", "Amy", "Olivia", "Lea", "Remi", "Vicki",
    "Daniel", "Lucia", "Sergio", "Mia", "Andres", "Lupe", "Pedro"
})
LONG_FORM = frozenset({"Danielle", "Gregory", "Ruth"})
VOICES_BY_ENGINE = {"neural": NEURAL, "standard": STANDARD, "generative": GENERATIVE,
                    "long-form": LONG_FORM}
ALL_VOICES = frozenset().union(*VOICES_BY_ENGINE.values())
MEMBERS = {"Engine", "LanguageCode", "LexiconNames", "OutputFormat", "SampleRate",
           "SpeechMarkTypes", "Text", "TextType", "VoiceId"}
MAX_TOTAL_CHARS = 6000
MAX_BILLED_CHARS = 3000
MAX_SKEW_SECONDS = 300
_AUTH_RE = re.compile(r"^AWS4-HMAC-SHA256 Credential=([^,]+), ?SignedHeaders=([^,]+), ?Signature=([0-9a-f]{64})$")
_RATE_RE = re.compile(r"^(\d{1,3})%$")
_VOLUME_RE = re.compile(r"^[+-]\d+(\.\d+)?dB$")
_PITCH_RE = re.compile(r"^[+-]\d+(\.\d+)?%$")


@dataclass
class EmulatorConfig:
    """What the emulated account allows, and how fast it answers."""

    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    session_token: str | None = None
    region: str = REGION
    max_concurrent: int = 64
    delay: float = 0.0


@dataclass
class Fault:
    """One injected misbehaviour, consumed by the next authenticated request."""

    kind: Literal["error", "drop", "delay", "garbage"] = "error"
    status: int = 500
    error_type: str = "ServiceFailureException"
    message: str = "An internal service failure occurred."
    seconds: float = 0.0


@dataclass
class RequestLog:
    """One request as received and answered."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any = None
    status: int = 0
    error_type: str = ""
    audio_seconds: float = 0.0
    spoken: str = ""


@dataclass
class _Answer:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class _Reject(Exception):
    def __init__(self, status: int, error_type: str, message: str):
        super().__init__(message)
        self.status, self.error_type, self.message = status, error_type, message


class _Drop(Exception):
    """Close the TCP connection without an answer."""


class PollyEmulator:
    """The emulator; use as ``async with PollyEmulator() as polly:``."""

    def __init__(self, config: EmulatorConfig | None = None):
        self.config = config or EmulatorConfig()
        self.faults: deque[Fault] = deque()
        self.requests: list[RequestLog] = []
        self.active = 0
        self.peak = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The endpoint to put in VOXQ_AWS_POLLY_ENDPOINT."""
        return f"http://{LOOPBACK}:{self.port}"

    def configure(self, settings: Settings, **changes: Any) -> Settings:
        """``settings`` pointed at this emulator with its credentials."""
        return settings.model_copy(update={
            "aws_polly_endpoint": self.url, "aws_region": self.config.region,
            "aws_access_key_id": SecretStr(self.config.access_key),
            "aws_secret_access_key": SecretStr(self.config.secret_key),
            "aws_session_token": SecretStr(self.config.session_token) if self.config.session_token
            else None, **changes})

    def env(self) -> dict[str, str]:
        """Environment variables pointing a worker process at this emulator."""
        env = {"VOXQ_AWS_POLLY_ENDPOINT": self.url, "AWS_REGION": self.config.region,
               "AWS_ACCESS_KEY_ID": self.config.access_key,
               "AWS_SECRET_ACCESS_KEY": self.config.secret_key}
        if self.config.session_token:
            env["AWS_SESSION_TOKEN"] = self.config.session_token
        return env

    @property
    def successes(self) -> list[RequestLog]:
        """Requests answered with audio."""
        return [r for r in self.requests if r.status == 200]

    async def __aenter__(self) -> PollyEmulator:
        self._server = await asyncio.start_server(self._serve, LOOPBACK, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await within(self._server.wait_closed(), 2)

    # --- HTTP -----------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, path, _version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
                headers: dict[str, str] = {}
                raw_headers: list[tuple[str, str]] = []
                while True:
                    h = (await reader.readline()).decode("latin-1").rstrip("\r\n")
                    if not h:
                        break
                    name, _, value = h.partition(":")
                    raw_headers.append((name.strip(), value.strip()))
                    headers[name.strip().lower()] = value.strip()
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    await self._write(writer, _Answer(411, b'{"message":"Length Required"}'))
                    return
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                log = RequestLog(method, path, headers)
                self.requests.append(log)
                try:
                    answer = await self._handle(log, raw_headers, body)
                except _Drop:
                    return
                await self._write(writer, answer)
                if headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    async def _write(writer: asyncio.StreamWriter, answer: _Answer) -> None:
        reason = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
                  411: "Length Required", 500: "Internal Server Error",
                  503: "Service Unavailable"}.get(answer.status, "Error")
        head = [f"HTTP/1.1 {answer.status} {reason}", f"Content-Length: {len(answer.body)}",
                f"x-amzn-RequestId: {uuid.uuid4()}"]
        head += [f"{k}: {v}" for k, v in answer.headers.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + answer.body)
        await writer.drain()

    async def _handle(self, log: RequestLog, raw_headers: list[tuple[str, str]],
                      body: bytes) -> _Answer:
        try:
            if (log.method, log.path) != ("POST", "/v1/speech"):
                raise _Reject(404, "UnknownOperationException", "Unknown operation")
            self._authenticate(log, raw_headers, body)
            if self.faults:
                fault = self.faults.popleft()
                if fault.kind == "drop":
                    raise _Drop
                if fault.kind == "delay":
                    await asyncio.sleep(fault.seconds)
                elif fault.kind == "garbage":
                    log.status = 200
                    return _Answer(200, b"<html>not audio</html>" * 20,
                                   {"Content-Type": "audio/mpeg"})
                else:
                    raise _Reject(fault.status, fault.error_type, fault.message)
            if self.active >= self.config.max_concurrent:
                raise _Reject(400, "ThrottlingException", "Rate exceeded")
            self.active += 1
            self.peak = max(self.peak, self.active)
            try:
                return await self._synthesize(log, body)
            finally:
                self.active -= 1
        except _Reject as e:
            log.status, log.error_type = e.status, e.error_type
            return _Answer(e.status, json.dumps({"message": e.message}).encode(),
                           {"Content-Type": "application/json", "x-amzn-ErrorType": e.error_type})

    # --- SigV4 ----------------------------------------------------------------------------

    def _authenticate(self, log: RequestLog, raw_headers: list[tuple[str, str]], body: bytes) -> None:
        headers = log.headers
        auth = headers.get("authorization")
        if not auth:
            raise _Reject(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
        m = _AUTH_RE.match(auth)
        if not m:
            raise _Reject(403, "IncompleteSignatureException",
                          "Authorization header requires 'Credential', 'SignedHeaders' and "
                          "'Signature' parameters.")
        credential, signed_names, signature = m.group(1), m.group(2).split(";"), m.group(3)
        parts = credential.split("/")
        if len(parts) != 5 or parts[4] != "aws4_request":
            raise _Reject(403, "IncompleteSignatureException", "Malformed credential scope.")
        access, date, region, service, _ = parts
        if access != self.config.access_key:
            raise _Reject(403, "UnrecognizedClientException",
                          "The security token included in the request is invalid.")
        if service != "polly":
            raise _Reject(403, "InvalidSignatureException",
                          "Credential should be scoped to correct service: 'polly'.")
        if region != self.config.region:
            raise _Reject(403, "InvalidSignatureException",
                          f"Credential should be scoped to a valid region, not '{region}'.")
        stamp = headers.get("x-amz-date", "")
        try:
            when = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            raise _Reject(403, "IncompleteSignatureException", "X-Amz-Date is missing or malformed.") from None
        if stamp[:8] != date:
            raise _Reject(403, "InvalidSignatureException", "Date in Credential scope does not match "
                          "YYYYMMDD from ISO-8601 version of date from HTTP.")
        if abs(time.time() - when.timestamp()) > MAX_SKEW_SECONDS:
            raise _Reject(403, "InvalidSignatureException", "Signature expired: the request time "
                          "is more than 5 minutes away from the server time.")
        if "host" not in signed_names or "x-amz-date" not in signed_names:
            raise _Reject(403, "InvalidSignatureException", "'Host' and 'X-Amz-Date' must be signed.")
        token = self.config.session_token
        if token is not None and (headers.get("x-amz-security-token") != token
                                  or "x-amz-security-token" not in signed_names):
            raise _Reject(403, "UnrecognizedClientException",
                          "The security token included in the request is invalid.")
        to_sign = {name: value for name, value in raw_headers if name.lower() in signed_names}
        if len(to_sign) != len(signed_names):
            raise _Reject(403, "InvalidSignatureException", "A signed header is missing.")
        request = AWSRequest(method="POST", url=f"http://{headers.get('host', '')}{log.path}",
                             data=body, headers=to_sign)
        request.context["timestamp"] = stamp
        signer = SigV4Auth(Credentials(access, self.config.secret_key, token), "polly", region)
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        if expected != signature:
            raise _Reject(403, "InvalidSignatureException",
                          "The request signature we calculated does not match the signature you "
                          "provided. Check your AWS Secret Access Key and signing method.")

    # --- SynthesizeSpeech -----------------------------------------------------------------

    async def _synthesize(self, log: RequestLog, raw: bytes) -> _Answer:
        try:
            body = json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise _Reject(400, "SerializationException", "Could not parse request body") from None
        if not isinstance(body, dict):
            raise _Reject(400, "SerializationException", "Request body must be a JSON object")
        log.body = body
        unknown = set(body) - MEMBERS
        if unknown:
            raise _Reject(400, "ValidationException", f"Unknown members: {sorted(unknown)}")
        for name in ("OutputFormat", "Text", "VoiceId"):
            if not isinstance(body.get(name), str):
                raise _Reject(400, "ValidationException",
                              f"1 validation error detected: Value null at '{name[0].lower()}"
                              f"{name[1:]}' failed to satisfy constraint: Member must not be null")
        engine = body.get("Engine", "standard")
        text_type = body.get("TextType", "text")
        voice, fmt = body["VoiceId"], body["OutputFormat"]
        for name, value, allowed in (("engine", engine, ENGINES), ("outputFormat", fmt, FORMATS),
                                     ("textType", text_type, ("ssml", "text")),
                                     ("voiceId", voice, ALL_VOICES)):
            if value not in allowed:
                raise _Reject(400, "ValidationException",
                              f"1 validation error detected: Value '{value}' at '{name}' failed to "
                              "satisfy constraint: Member must satisfy enum value set")
        if voice not in VOICES_BY_ENGINE[engine]:
            raise _Reject(400, "EngineNotSupportedException",
                          f"This voice does not support the selected engine: {engine}")
        rate = body.get("SampleRate", "24000" if engine != "standard" else "22050")
        if not isinstance(rate, str) or rate not in FORMAT_RATES.get(fmt, set()):
            raise _Reject(400, "InvalidSampleRateException",
                          f"Invalid sample rate {rate!r} for output format {fmt}")
        text = body["Text"]
        if len(text) > MAX_TOTAL_CHARS:
            raise _Reject(400, "TextLengthExceededException",
                          f"Maximum text length has been exceeded ({len(text)} > {MAX_TOTAL_CHARS})")
        speed = 1.0
        spoken = text
        if text_type == "ssml":
            spoken, speed = self._ssml(text, engine)
        if len(spoken) > MAX_BILLED_CHARS:
            raise _Reject(400, "TextLengthExceededException",
                          f"Maximum text length has been exceeded ({len(spoken)} billed > "
                          f"{MAX_BILLED_CHARS})")
        if not re.search(r"\w", spoken):
            raise _Reject(400, "ValidationException", "Text must contain something to speak")
        if fmt != "mp3":
            raise _Reject(400, "ValidationException", "this emulator only produces mp3")
        if self.config.delay:
            await asyncio.sleep(self.config.delay)
        seconds = speech_seconds(spoken, speed)
        freq = 300.0 + 20.0 * (sorted(ALL_VOICES).index(voice) % 20)
        audio = await asyncio.to_thread(mp3_tone, seconds, int(rate), freq)
        log.status, log.audio_seconds, log.spoken = 200, seconds, spoken
        return _Answer(200, audio, {"Content-Type": "audio/mpeg",
                                    "x-amzn-RequestCharacters": str(len(spoken))})

    @staticmethod
    def _ssml(text: str, engine: str) -> tuple[str, float]:
        """Spoken text and speed of an SSML document; InvalidSsmlException when it is bad."""
        try:
            root = ET.fromstring(text)
        except ET.ParseError as e:
            raise _Reject(400, "InvalidSsmlException", f"Invalid SSML request: {e}") from None
        if root.tag != "speak":
            raise _Reject(400, "InvalidSsmlException", "Invalid SSML request: root must be <speak>")
        speed = 1.0
        for el in root.iter():
            if el.tag not in ("speak", "prosody", "break", "p", "s"):
                raise _Reject(400, "InvalidSsmlException", f"Unsupported SSML tag <{el.tag}>")
            if el.tag != "prosody":
                continue
            for name, value in el.attrib.items():
                ok = {"rate": _RATE_RE, "volume": _VOLUME_RE, "pitch": _PITCH_RE}.get(name)
                if ok is None or not ok.match(value):
                    raise _Reject(400, "InvalidSsmlException",
                                  f"Invalid value {value!r} for prosody attribute {name!r}")
                if name == "pitch" and engine != "standard":
                    raise _Reject(400, "InvalidSsmlException",
                                  f"Unsupported prosody attribute 'pitch' for {engine} voices")
                if name == "rate":
                    percent = int(_RATE_RE.match(value).group(1))  # type: ignore[union-attr]
                    if not 20 <= percent <= 200:
                        raise _Reject(400, "InvalidSsmlException", "prosody rate must be 20%-200%")
                    speed = percent / 100
        return "".join(root.itertext()), speed
