"""Volcengine (ByteDance / Doubao) speech binary frames: pure encode/decode, no sockets.

One codec for every Volcengine speech WebSocket (``docs/protocols/volcengine.md``, "Binary frame"): the
big-model streaming ASR (``sauc``), the v1 binary TTS and the v3 bidirectional TTS. Layout,
all integers big-endian::

    byte 0  version (4 bits, always 1) | header size in 4-byte words (4 bits, 1..14)
    byte 1  message type (4 bits)      | flags (4 bits)
    byte 2  serialization (4 bits)     | compression (4 bits)
    byte 3  reserved (written 0, not checked on decode)
    header extension                   (header size - 1) * 4 bytes, kept opaque
    [uint32 error code]                error frames (type 0b1111) only
    [int32 sequence]                   flags bit0, any other type
    [int32 event]                      flags bit2 (v3 TTS)
    [uint32 len + UTF-8 id]            with an event: connection id for events 50/51/52,
                                       none for events 1/2, session id for every other event
    uint32 payload size | payload      size counts the bytes after compression

Flags: bit0 ⇒ a sequence follows, bit1 ⇒ last packet, bit2 ⇒ an event number follows, bit3 is
reserved (refused). So ``0b0001`` = positive sequence, ``0b0010`` = last packet without a
sequence, ``0b0011`` = last packet with a (negative) sequence, ``0b0100`` = event.

A :class:`Frame` holds the *uncompressed* payload; :func:`encode` compresses it when
``compression`` is gzip (``mtime=0``, so output is reproducible) and :func:`decode` inflates it
(bounded: a gzip bomb is a :class:`PayloadTooLargeError`). Serialization is only a label on
the frame (clients label audio as JSON, servers ignore it); :meth:`Frame.json` parses on demand.
Every defect raises its own subclass of :class:`FrameError`; nothing else escapes the decoder.

The v1 TTS service is read as its reference client reads it (:attr:`Dialect.TTS_V1`,
``docs/protocols/volcengine.md``): an audio-only response with flags 0 is a bare ACK (nothing
after the header is read); with any other flags an int32 sequence and the size follow, and the
audio ends when the sequence is negative; a frontend response (type 0xC) is a size and a
payload whatever its flags. Errors and gzip payloads are read as everywhere else.
"""

from __future__ import annotations

import enum
import gzip
import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, NoReturn

__all__ = [
    "CONNECTION_ID_EVENTS",
    "MAX_ID_LENGTH",
    "MAX_PAYLOAD_LENGTH",
    "NO_ID_EVENTS",
    "Compression",
    "CompressionError",
    "Decoder",
    "DecoderFailedError",
    "Dialect",
    "EncodeError",
    "Event",
    "Frame",
    "FrameError",
    "IdTooLongError",
    "InvalidFlagsError",
    "InvalidHeaderSizeError",
    "InvalidIdError",
    "InvalidJSONError",
    "MessageType",
    "PayloadTooLargeError",
    "Serialization",
    "TrailingDataError",
    "TruncatedFrameError",
    "UnknownCompressionError",
    "UnknownMessageTypeError",
    "UnknownSerializationError",
    "UnsupportedVersionError",
    "audio_only_request",
    "decode",
    "encode",
    "error_frame",
    "frame_length",
    "full_client_request",
    "full_server_response",
    "refusal_detail",
]

PROTOCOL_VERSION = 1
MAX_PAYLOAD_LENGTH = 16 * 1024 * 1024
"""Largest payload, compressed or inflated, the decoder accepts by default."""
MAX_ID_LENGTH = 1024
"""Largest session / connection id, in UTF-8 bytes."""

_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_FLAG_SEQUENCE = 0b0001
_FLAG_LAST = 0b0010
_FLAG_EVENT = 0b0100
_FLAG_RESERVED = 0b1000


class MessageType(enum.IntEnum):
    """The message type nibble (§1)."""

    FULL_CLIENT_REQUEST = 0b0001
    AUDIO_ONLY_REQUEST = 0b0010
    FULL_SERVER_RESPONSE = 0b1001
    AUDIO_ONLY_RESPONSE = 0b1011
    FRONTEND_RESPONSE = 0b1100
    ERROR = 0b1111


class Dialect(enum.Enum):
    """How flags are read: as §1 says (ASR, v3 TTS), or as the v1 TTS reference client does."""

    STANDARD = "standard"
    TTS_V1 = "tts-v1"


class Serialization(enum.IntEnum):
    """The serialization nibble: raw bytes, JSON, or vendor-custom (payload kept opaque)."""

    NONE = 0b0000
    JSON = 0b0001
    CUSTOM = 0b1111


class Compression(enum.IntEnum):
    """The compression nibble; custom compression is refused (it is never used in practice)."""

    NONE = 0b0000
    GZIP = 0b0001


class Event(enum.IntEnum):
    """v3 TTS event numbers (§3.3; 154/201/250/359 are in the vendor demo's enum only)."""

    START_CONNECTION = 1
    FINISH_CONNECTION = 2
    CONNECTION_STARTED = 50
    CONNECTION_FAILED = 51
    CONNECTION_FINISHED = 52
    START_SESSION = 100
    CANCEL_SESSION = 101
    FINISH_SESSION = 102
    SESSION_STARTED = 150
    SESSION_CANCELED = 151
    SESSION_FINISHED = 152
    SESSION_FAILED = 153
    USAGE_RESPONSE = 154
    TASK_REQUEST = 200
    UPDATE_CONFIG = 201
    AUDIO_MUTED = 250
    TTS_SENTENCE_START = 350
    TTS_SENTENCE_END = 351
    TTS_RESPONSE = 352
    TTS_ENDED = 359


NO_ID_EVENTS = frozenset({Event.START_CONNECTION, Event.FINISH_CONNECTION})
"""Events followed directly by the payload size."""
CONNECTION_ID_EVENTS = frozenset({Event.CONNECTION_STARTED, Event.CONNECTION_FAILED,
                                  Event.CONNECTION_FINISHED})
"""Events that carry a connection id (every other event carries a session id)."""


# --- errors ---------------------------------------------------------------------------------------


class FrameError(ValueError):
    """Base of every defect the codec reports; ``decoded``: frames completed before it in a feed."""

    def __init__(self, message: str) -> None:
        """The error with its message; ``decoded`` starts empty."""
        super().__init__(message)
        self.decoded: list[Frame] = []


class TruncatedFrameError(FrameError):
    """The input ends before the frame does (header, a field or the payload is cut short)."""


class TrailingDataError(FrameError):
    """Bytes follow the one frame that was expected."""


class UnsupportedVersionError(FrameError):
    """The protocol version nibble is not 1."""


class InvalidHeaderSizeError(FrameError):
    """The header size nibble is 0, or 15 (a size defined only by a custom extension)."""


class UnknownMessageTypeError(FrameError):
    """The message type nibble is none of the six known types."""


class InvalidFlagsError(FrameError):
    """The reserved flag bit is set, or an error frame claims a sequence."""


class UnknownSerializationError(FrameError):
    """The serialization nibble is not none, JSON or custom."""


class UnknownCompressionError(FrameError):
    """The compression nibble is not none or gzip."""


class PayloadTooLargeError(FrameError):
    """A payload (declared, or once inflated) exceeds the decoder's limit."""


class IdTooLongError(FrameError):
    """A session or connection id exceeds :data:`MAX_ID_LENGTH`."""


class InvalidIdError(FrameError):
    """A session or connection id is not valid UTF-8."""


class CompressionError(FrameError):
    """A gzip payload does not inflate (corrupt, truncated or followed by junk)."""


class InvalidJSONError(FrameError):
    """A payload read as JSON is not UTF-8 JSON."""


class DecoderFailedError(FrameError):
    """The incremental decoder met a defect earlier and refuses further input."""


class EncodeError(FrameError):
    """A frame the encoder refuses: inconsistent fields or values that do not fit their width."""


# --- the frame ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame; ``payload`` is uncompressed, optional fields are None when absent."""

    type: MessageType
    payload: bytes = b""
    serialization: Serialization = Serialization.NONE
    compression: Compression = Compression.NONE
    sequence: int | None = None
    last: bool = False
    event: int | None = None
    session_id: str | None = None
    connection_id: str | None = None
    error_code: int | None = None
    extension: bytes = field(default=b"", repr=False)

    @property
    def flags(self) -> int:
        """The flags nibble these fields encode to."""
        return ((_FLAG_SEQUENCE if self.sequence is not None else 0)
                | (_FLAG_LAST if self.last else 0)
                | (_FLAG_EVENT if self.event is not None else 0))

    @property
    def is_last(self) -> bool:
        """The last-packet flag is set (or, as the v1 TTS demo reads it, the sequence is < 0)."""
        return self.last or (self.sequence is not None and self.sequence < 0)

    def json(self) -> Any:
        """The payload parsed as UTF-8 JSON; InvalidJSONError otherwise."""
        try:
            return json.loads(self.payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise InvalidJSONError(f"payload is not UTF-8 JSON: {e}") from None

    @property
    def error_message(self) -> str:
        """An error frame's text (``message`` of a JSON body, else the body as text), bounded."""
        text = self.payload.decode("utf-8", errors="replace")
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            for key in ("message", "error", "msg"):
                if isinstance(doc.get(key), str):
                    text = doc[key]
                    break
        return " ".join(text.split())[:500]

    def __repr__(self) -> str:
        """Fields, with a bounded view of the payload (audio payloads are large)."""
        parts = [f"{self.type.name}", f"payload={len(self.payload)} bytes {self.payload[:24]!r}"]
        for name in ("sequence", "event", "session_id", "connection_id", "error_code"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={value!r}")
        if self.last:
            parts.append("last")
        parts.append(f"{self.serialization.name}/{self.compression.name}")
        return f"Frame({', '.join(parts)})"


# --- encoding -------------------------------------------------------------------------------------


def _id_field(name: str, value: str) -> bytes:
    """uint32 length + UTF-8 bytes of a session or connection id."""
    raw = _utf8(name, value)
    if len(raw) > MAX_ID_LENGTH:
        raise EncodeError(f"{name} is {len(raw)} bytes, limit {MAX_ID_LENGTH}")
    return _U32.pack(len(raw)) + raw


def _utf8(name: str, value: str) -> bytes:
    """UTF-8 bytes of ``value``; EncodeError for lone surrogates."""
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise EncodeError(f"{name} is not encodable as UTF-8") from None


def _check(frame: Frame) -> None:
    """Refuse frames whose fields contradict each other or the protocol's sign rules."""
    if frame.sequence is not None and frame.type is MessageType.ERROR:
        raise EncodeError("an error frame carries no sequence")
    if (frame.error_code is None) != (frame.type is not MessageType.ERROR):
        raise EncodeError("error_code is required on error frames and only there")
    if frame.sequence is not None:
        if frame.last and frame.sequence >= 0:
            raise EncodeError(f"the last packet's sequence must be negative, not {frame.sequence}")
        if not frame.last and frame.sequence <= 0:
            raise EncodeError(f"a sequence before the last packet must be positive, "
                              f"not {frame.sequence}")
    if frame.event is None:
        if frame.session_id is not None or frame.connection_id is not None:
            raise EncodeError("session and connection ids travel only with an event")
    elif frame.event in NO_ID_EVENTS:
        if frame.session_id is not None or frame.connection_id is not None:
            raise EncodeError(f"event {frame.event} carries no id")
    elif frame.event in CONNECTION_ID_EVENTS:
        if frame.session_id is not None:
            raise EncodeError(f"event {frame.event} carries a connection id, not a session id")
    elif frame.connection_id is not None:
        raise EncodeError(f"event {frame.event} carries a session id, not a connection id")


def encode(frame: Frame, *, check: bool = True) -> bytes:
    """Wire bytes of ``frame``; ``check=False`` skips the protocol checks (to forge bad frames)."""
    if check:
        _check(frame)
    if len(frame.extension) % 4 or len(frame.extension) > 13 * 4:
        raise EncodeError("header extension must be a multiple of 4 bytes, at most 52")
    payload = frame.payload
    if frame.compression is Compression.GZIP:
        payload = gzip.compress(payload, mtime=0)
    elif frame.compression is not Compression.NONE:
        raise EncodeError(f"cannot encode compression {frame.compression!r}")
    if len(payload) > 0xFFFFFFFF:
        raise EncodeError(f"payload of {len(payload)} bytes does not fit a uint32 size")
    words = 1 + len(frame.extension) // 4
    parts = [bytes(((PROTOCOL_VERSION << 4) | words, (frame.type << 4) | frame.flags,
                    (frame.serialization << 4) | frame.compression, 0)), frame.extension]
    try:
        if frame.type is MessageType.ERROR:
            parts.append(_U32.pack(frame.error_code or 0))
        if frame.sequence is not None:
            parts.append(_I32.pack(frame.sequence))
        if frame.event is not None:
            parts.append(_I32.pack(frame.event))
            if frame.event in CONNECTION_ID_EVENTS:
                parts.append(_id_field("connection id", frame.connection_id or ""))
            elif frame.event not in NO_ID_EVENTS:
                parts.append(_id_field("session id", frame.session_id or ""))
    except struct.error as e:
        raise EncodeError(f"a number does not fit its 32-bit field: {e}") from None
    parts.append(_U32.pack(len(payload)))
    parts.append(payload)
    return b"".join(parts)


def full_client_request(body: Any, *, sequence: int | None = None, compress: bool = True) -> bytes:
    """A full client request: ``body`` as compact UTF-8 JSON (bytes are sent as they are)."""
    payload = body if isinstance(body, bytes) else _compact_json(body)
    return encode(Frame(MessageType.FULL_CLIENT_REQUEST, payload, Serialization.JSON,
                        Compression.GZIP if compress else Compression.NONE, sequence=sequence))


def audio_only_request(audio: bytes, *, sequence: int | None = None, last: bool = False,
                       compress: bool = True) -> bytes:
    """An audio-only request (raw serialization); the last one has ``last`` and, with
    sequences, a negative ``sequence``."""
    return encode(Frame(MessageType.AUDIO_ONLY_REQUEST, bytes(audio), Serialization.NONE,
                        Compression.GZIP if compress else Compression.NONE, sequence=sequence,
                        last=last))


def full_server_response(body: Any, *, sequence: int | None = None, last: bool = False,
                         compress: bool = True) -> bytes:
    """A full server response (emulator side): JSON body, a sequence, negative when last."""
    payload = body if isinstance(body, bytes) else _compact_json(body)
    return encode(Frame(MessageType.FULL_SERVER_RESPONSE, payload, Serialization.JSON,
                        Compression.GZIP if compress else Compression.NONE, sequence=sequence,
                        last=last))


def error_frame(code: int, message: str | bytes, *, json_body: bool = False) -> bytes:
    """An error frame (emulator side): ``11 F0 10 00``, code, size, message (plain or JSON)."""
    if isinstance(message, bytes):
        payload = message
    elif json_body:
        payload = _compact_json({"error": message})
    else:
        payload = message.encode("utf-8")
    return encode(Frame(MessageType.ERROR, payload, Serialization.JSON, Compression.NONE,
                        error_code=code))


def _compact_json(document: Any) -> bytes:
    """JSON the way the vendor demos send it: compact, UTF-8, not ASCII-escaped."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# --- decoding -------------------------------------------------------------------------------------


class _Reader:
    """Cursor over one buffer; every short read is a TruncatedFrameError naming the field."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes | bytearray | memoryview, pos: int = 0) -> None:
        """A cursor at ``pos`` of ``data``."""
        self.data = data
        self.pos = pos

    def take(self, n: int, what: str) -> bytes:
        """The next ``n`` bytes."""
        end = self.pos + n
        if end > len(self.data):
            raise TruncatedFrameError(f"input ends inside the {what} "
                                      f"(needs {n} bytes at offset {self.pos})")
        out = bytes(self.data[self.pos:end])
        self.pos = end
        return out

    def u32(self, what: str) -> int:
        """The next big-endian uint32."""
        return int(_U32.unpack(self.take(4, what))[0])

    def i32(self, what: str) -> int:
        """The next big-endian int32."""
        return int(_I32.unpack(self.take(4, what))[0])

    def ident(self, what: str) -> str:
        """The next length-prefixed UTF-8 id, bounded by MAX_ID_LENGTH."""
        n = self.u32(f"{what} length")
        if n > MAX_ID_LENGTH:
            raise IdTooLongError(f"{what} of {n} bytes exceeds the limit {MAX_ID_LENGTH}")
        raw = self.take(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidIdError(f"{what} is not valid UTF-8") from None


@dataclass(frozen=True, slots=True)
class _Head:
    """What the fixed header says, before the payload is read."""

    type: MessageType
    serialization: Serialization
    compression: Compression
    flags: int
    extension: bytes


def _head(r: _Reader) -> _Head:
    """Parse and check the fixed header and skip its extension."""
    b0, b1, b2, _reserved = r.take(4, "4-byte header")
    if b0 >> 4 != PROTOCOL_VERSION:
        raise UnsupportedVersionError(f"protocol version {b0 >> 4}; only 1 exists")
    words = b0 & 0x0F
    if words == 0 or words == 0x0F:
        raise InvalidHeaderSizeError(f"header size nibble {words} (valid: 1..14)")
    try:
        kind = MessageType(b1 >> 4)
    except ValueError:
        raise UnknownMessageTypeError(f"message type {b1 >> 4:#06b}") from None
    flags = b1 & 0x0F
    if flags & _FLAG_RESERVED:
        raise InvalidFlagsError(f"flags {flags:#06b} set the reserved bit")
    if kind is MessageType.ERROR and flags & _FLAG_SEQUENCE:
        raise InvalidFlagsError("an error frame cannot carry a sequence")
    try:
        serialization = Serialization(b2 >> 4)
    except ValueError:
        raise UnknownSerializationError(f"serialization {b2 >> 4:#06b}") from None
    try:
        compression = Compression(b2 & 0x0F)
    except ValueError:
        raise UnknownCompressionError(f"compression {b2 & 0x0F:#06b}") from None
    extension = r.take((words - 1) * 4, "header extension")
    return _Head(kind, serialization, compression, flags, extension)


def _inflate(data: bytes, limit: int) -> bytes:
    """Gunzip one gzip member, refusing corrupt input, trailing junk and output past ``limit``."""
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as e:
        raise CompressionError(f"gzip payload does not inflate: {e}") from None
    if len(out) > limit:
        raise PayloadTooLargeError(f"gzip payload inflates past the limit of {limit} bytes")
    if not inflater.eof:
        raise CompressionError("gzip payload is truncated")
    if inflater.unused_data:
        raise CompressionError(f"{len(inflater.unused_data)} bytes follow the gzip stream")
    return out


def _payload(r: _Reader, h: _Head, max_payload: int) -> bytes:
    """The size-prefixed payload at the reader's position, inflated if gzip."""
    size = r.u32("payload size")
    if size > max_payload:
        raise PayloadTooLargeError(f"payload size {size} exceeds the limit {max_payload}")
    payload = r.take(size, "payload")
    if h.compression is Compression.GZIP:
        payload = _inflate(payload, max_payload)
    return payload


def _tts_v1_frame(r: _Reader, h: _Head, max_payload: int) -> Frame | None:
    """A v1 TTS audio or frontend response read as the reference client reads it; None for
    the other types (read the standard way)."""
    if h.type is MessageType.AUDIO_ONLY_RESPONSE:
        if not h.flags:  # a bare ACK: the client reads nothing after the header
            r.pos = len(r.data)
            return Frame(h.type, b"", h.serialization, h.compression, extension=h.extension)
        sequence = r.i32("sequence")
        return Frame(h.type, _payload(r, h, max_payload), h.serialization, h.compression,
                     sequence, sequence < 0, extension=h.extension)
    if h.type is MessageType.FRONTEND_RESPONSE:
        return Frame(h.type, _payload(r, h, max_payload), h.serialization, h.compression,
                     extension=h.extension)
    return None


def _frame(r: _Reader, max_payload: int, dialect: Dialect = Dialect.STANDARD) -> Frame:
    """Parse one frame at the reader's position."""
    h = _head(r)
    if dialect is Dialect.TTS_V1:
        v1 = _tts_v1_frame(r, h, max_payload)
        if v1 is not None:
            return v1
    error_code = r.u32("error code") if h.type is MessageType.ERROR else None
    sequence = r.i32("sequence") if h.flags & _FLAG_SEQUENCE else None
    event: int | None = None
    session_id: str | None = None
    connection_id: str | None = None
    if h.flags & _FLAG_EVENT:
        event = r.i32("event number")
        if event in CONNECTION_ID_EVENTS:
            connection_id = r.ident("connection id")
        elif event not in NO_ID_EVENTS:
            session_id = r.ident("session id")
    payload = _payload(r, h, max_payload)
    return Frame(h.type, payload, h.serialization, h.compression, sequence,
                 bool(h.flags & _FLAG_LAST), event, session_id, connection_id, error_code,
                 h.extension)


def decode(data: bytes | bytearray | memoryview, *, max_payload: int = MAX_PAYLOAD_LENGTH,
           dialect: Dialect = Dialect.STANDARD) -> Frame:
    """Decode exactly one frame (one WebSocket message); short or extra bytes are errors."""
    r = _Reader(data)
    frame = _frame(r, max_payload, dialect)
    if r.pos != len(data):
        raise TrailingDataError(f"{len(data) - r.pos} bytes follow the {r.pos}-byte frame")
    return frame


def frame_length(data: bytes | bytearray | memoryview, *, max_payload: int = MAX_PAYLOAD_LENGTH
                 ) -> int | None:
    """Total length of the frame starting ``data``, or None until enough bytes say it."""
    r = _Reader(data)
    try:
        h = _head(r)
        if h.type is MessageType.ERROR:
            r.take(4, "error code")
        if h.flags & _FLAG_SEQUENCE:
            r.take(4, "sequence")
        if h.flags & _FLAG_EVENT:
            event = r.i32("event number")
            if event not in NO_ID_EVENTS:
                n = r.u32("id length")
                if n > MAX_ID_LENGTH:
                    raise IdTooLongError(f"id of {n} bytes exceeds the limit {MAX_ID_LENGTH}")
                r.take(n, "id")
        size = r.u32("payload size")
    except TruncatedFrameError:
        return None
    if size > max_payload:
        raise PayloadTooLargeError(f"payload size {size} exceeds the limit {max_payload}")
    return r.pos + size


class Decoder:
    """Incremental decoder: feed bytes split anywhere, get whole frames; a defect is final."""

    __slots__ = ("_buffer", "_failure", "_max_payload")

    def __init__(self, *, max_payload: int = MAX_PAYLOAD_LENGTH) -> None:
        """A decoder whose frames may each carry up to ``max_payload`` bytes."""
        self._buffer = bytearray()
        self._failure: FrameError | None = None
        self._max_payload = max_payload

    @property
    def pending(self) -> int:
        """Buffered bytes that do not form a whole frame yet."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Add bytes; return every frame they complete, in order (errors carry ``decoded``)."""
        if self._failure is not None:
            self._refuse()
        self._buffer += data
        frames: list[Frame] = []
        try:
            while self._buffer:
                n = frame_length(self._buffer, max_payload=self._max_payload)
                if n is None or n > len(self._buffer):
                    break
                frames.append(decode(bytes(self._buffer[:n]), max_payload=self._max_payload))
                del self._buffer[:n]
        except FrameError as e:
            self._buffer.clear()
            e.decoded = frames
            self._failure = e
            raise
        return frames

    def close(self) -> None:
        """End of input: a partial frame still buffered is a TruncatedFrameError."""
        if self._failure is not None:
            self._refuse()
        if self._buffer:
            error = TruncatedFrameError(f"input ended inside a frame ({len(self._buffer)} "
                                        "bytes buffered)")
            self._buffer.clear()
            self._failure = error
            raise error

    def _refuse(self) -> NoReturn:
        """Raise for input arriving after a defect."""
        raise DecoderFailedError(f"decoder already failed: {self._failure}") from self._failure


def refusal_detail(body: bytes) -> tuple[str, int | None]:
    """The message and code of a refused WebSocket upgrade's body: JSON with ``message`` and
    ``code`` at the top or under ``header`` (ASR and TTS alike), else the body as text."""
    text = body.decode("utf-8", errors="replace")
    try:
        doc = json.loads(text)
    except ValueError:
        return text, None
    head = doc.get("header", doc) if isinstance(doc, dict) else None
    if not isinstance(head, dict):
        return text, None
    message, code = head.get("message"), head.get("code")
    return (message if isinstance(message, str) else text,
            code if isinstance(code, int) else None)
