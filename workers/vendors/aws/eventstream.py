"""AWS event-stream binary codec (``application/vnd.amazon.eventstream``): pure, no I/O.

Wire layout (see ``docs/protocols/aws-transcribe.md``, "Event-stream framing")::

    uint32 total_length | uint32 headers_length | uint32 prelude_crc
    headers (headers_length bytes) | payload | uint32 message_crc

All integers are big-endian; both CRCs are the zlib CRC-32.  The message CRC covers
every byte before it, the prelude CRC included.

Header values map to Python as follows (decoding always yields the left column, so a
decoded message re-encodes to the same bytes):

=================  =========  ==========================================
Python value       type code  wire form
=================  =========  ==========================================
``True``/``False`` 0 / 1      no value bytes
``Byte(n)``        2          int8
``Short(n)``       3          int16
``Integer(n)``     4          int32
``Long(n)``        5          int64
``bytes``          6          uint16 length + bytes
``str``            7          uint16 length + UTF-8
``Timestamp(ms)``  8          int64 milliseconds since the Unix epoch
``uuid.UUID``      9          16 raw bytes
=================  =========  ==========================================

Plain ``int`` is refused on encode because its width is ambiguous; ``bytearray`` and
``memoryview`` are accepted as byte arrays and an aware ``datetime`` as a timestamp.
"""

from __future__ import annotations

import enum
import json
import struct
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import ClassVar, NoReturn, cast

__all__ = [
    "MAX_HEADERS_LENGTH",
    "MAX_HEADER_NAME_LENGTH",
    "MAX_HEADER_VALUE_LENGTH",
    "MAX_PAYLOAD_LENGTH",
    "MIN_MESSAGE_LENGTH",
    "PRELUDE_LENGTH",
    "Byte",
    "Decoder",
    "DecoderFailedError",
    "DuplicateHeaderError",
    "EncodeError",
    "EventStreamError",
    "HeaderNameError",
    "HeaderType",
    "HeaderValue",
    "IncompleteMessageError",
    "Integer",
    "InvalidHeaderError",
    "InvalidHeaderValueError",
    "InvalidLengthError",
    "Long",
    "Message",
    "MessageCRCError",
    "PreludeCRCError",
    "ServiceException",
    "Short",
    "Timestamp",
    "TrailingDataError",
    "TruncatedHeaderError",
    "UnknownHeaderTypeError",
    "audio_event",
    "decode_message",
    "encode_headers",
    "encode_message",
    "encode_raw",
    "event_message",
    "exception_message",
    "parse_exception",
    "transcript_event",
]

PRELUDE_LENGTH = 12
"""Bytes before the headers: total length, headers length, prelude CRC."""
MIN_MESSAGE_LENGTH = 16
"""Prelude plus message CRC: the size of a message with no headers and no payload."""
MAX_HEADERS_LENGTH = 128 * 1024
"""Largest headers block the AWS SDK decoders accept (§4.1)."""
MAX_PAYLOAD_LENGTH = 16 * 1024 * 1024
"""Largest payload per the protocol notes (§4.1); botocore allows 24 MiB."""
MAX_HEADER_VALUE_LENGTH = 32767
"""Largest string / byte-array header value the SDKs accept, although the length field is uint16."""
MAX_HEADER_NAME_LENGTH = 255
"""Header names carry a one-byte length."""

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_PRELUDE = struct.Struct(">II")
_PRELUDE_CRC = struct.Struct(">III")
_I64 = struct.Struct(">q")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class HeaderType(enum.IntEnum):
    """Header value type codes as they appear on the wire."""

    BOOL_TRUE = 0
    BOOL_FALSE = 1
    BYTE = 2
    SHORT = 3
    INTEGER = 4
    LONG = 5
    BYTE_ARRAY = 6
    STRING = 7
    TIMESTAMP = 8
    UUID = 9


# errors -------------------------------------------------------------------------------------------


class EventStreamError(ValueError):
    """Base of every event-stream defect; ``decoded``: messages completed before it in that feed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.decoded: list[Message] = []


class InvalidLengthError(EventStreamError):
    """The prelude's total or headers length is out of bounds or inconsistent."""


class PreludeCRCError(EventStreamError):
    """The prelude CRC does not match bytes 0..7: the stream is corrupt or not an event stream."""


class MessageCRCError(EventStreamError):
    """The trailing message CRC does not match the message bytes."""


class InvalidHeaderError(EventStreamError):
    """The headers block is malformed (base of the specific header defects)."""


class HeaderNameError(InvalidHeaderError):
    """A header name is empty or not valid UTF-8."""


class UnknownHeaderTypeError(InvalidHeaderError):
    """A header carries a type code outside 0..9."""


class TruncatedHeaderError(InvalidHeaderError):
    """A header name or value runs past the end of the headers block."""


class InvalidHeaderValueError(InvalidHeaderError):
    """A header value is invalid: a string that is not UTF-8, or longer than the SDK limit."""


class DuplicateHeaderError(InvalidHeaderError):
    """A header name occurs twice in one message."""


class IncompleteMessageError(EventStreamError):
    """The input ended inside a message."""


class TrailingDataError(EventStreamError):
    """Bytes follow the one message that was expected."""


class DecoderFailedError(EventStreamError):
    """The decoder met a defect or was closed; the stream is desynchronised, input is refused."""


class EncodeError(EventStreamError):
    """A message breaks the format's limits (length of name/value/headers/payload, duplicates)."""


# typed values -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _FixedInt:
    """A signed integer header value of a fixed wire width."""

    value: int
    _code: ClassVar[int] = 0
    _struct: ClassVar[struct.Struct] = struct.Struct(">b")

    def __post_init__(self) -> None:
        """Refuse values that do not fit the wire width (bool included, it is not a number here)."""
        if type(self.value) is not int:
            raise TypeError(f"{type(self).__name__} needs an int, got {type(self.value).__name__}")
        bits = self._struct.size * 8
        if not -(1 << (bits - 1)) <= self.value < (1 << (bits - 1)):
            raise ValueError(
                f"{type(self).__name__} value {self.value} does not fit in {bits} signed bits"
            )


@dataclass(frozen=True, slots=True)
class Byte(_FixedInt):
    """Signed 8-bit header value (type 2)."""

    _code: ClassVar[int] = HeaderType.BYTE
    _struct: ClassVar[struct.Struct] = struct.Struct(">b")


@dataclass(frozen=True, slots=True)
class Short(_FixedInt):
    """Signed 16-bit header value (type 3)."""

    _code: ClassVar[int] = HeaderType.SHORT
    _struct: ClassVar[struct.Struct] = struct.Struct(">h")


@dataclass(frozen=True, slots=True)
class Integer(_FixedInt):
    """Signed 32-bit header value (type 4)."""

    _code: ClassVar[int] = HeaderType.INTEGER
    _struct: ClassVar[struct.Struct] = struct.Struct(">i")


@dataclass(frozen=True, slots=True)
class Long(_FixedInt):
    """Signed 64-bit header value (type 5)."""

    _code: ClassVar[int] = HeaderType.LONG
    _struct: ClassVar[struct.Struct] = struct.Struct(">q")


@dataclass(frozen=True, slots=True)
class Timestamp(_FixedInt):
    """Timestamp header value (type 8): signed 64-bit milliseconds since the Unix epoch."""

    _code: ClassVar[int] = HeaderType.TIMESTAMP
    _struct: ClassVar[struct.Struct] = _I64

    @property
    def millis(self) -> int:
        """Milliseconds since the Unix epoch (same as ``value``)."""
        return self.value

    @classmethod
    def from_datetime(cls, when: datetime) -> Timestamp:
        """Build from an aware datetime (truncated to the millisecond); naive ones are ambiguous."""
        if when.tzinfo is None or when.utcoffset() is None:
            raise ValueError("timestamp datetime must be timezone-aware")
        return cls((when - _EPOCH) // timedelta(milliseconds=1))

    def to_datetime(self) -> datetime:
        """Return the instant as an aware UTC datetime."""
        return _EPOCH + timedelta(milliseconds=self.value)


HeaderValue = bool | Byte | Short | Integer | Long | bytes | str | Timestamp | uuid.UUID
"""A decoded header value (the encoder also takes bytearray, memoryview, aware datetime)."""

HeaderInput = HeaderValue | bytearray | memoryview | datetime
HeadersInput = Mapping[str, HeaderInput] | Iterable[tuple[str, HeaderInput]]


# message ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Message:
    """One decoded event-stream message: ordered headers and the raw payload."""

    headers: dict[str, HeaderValue] = field(default_factory=dict)
    payload: bytes = b""

    def _text(self, name: str) -> str | None:
        """Return a string header, or None when absent or not a string."""
        value = self.headers.get(name)
        return value if isinstance(value, str) else None

    @property
    def message_type(self) -> str | None:
        """``:message-type`` (``event``, ``exception`` or ``error``)."""
        return self._text(":message-type")

    @property
    def event_type(self) -> str | None:
        """``:event-type`` of an event message (e.g. ``TranscriptEvent``)."""
        return self._text(":event-type")

    @property
    def exception_type(self) -> str | None:
        """``:exception-type`` of an exception message (e.g. ``BadRequestException``)."""
        return self._text(":exception-type")

    @property
    def content_type(self) -> str | None:
        """``:content-type`` of the payload."""
        return self._text(":content-type")

    @property
    def error_code(self) -> str | None:
        """``:error-code`` of a generic ``error`` message."""
        return self._text(":error-code")

    @property
    def error_message(self) -> str | None:
        """``:error-message`` of a generic ``error`` message."""
        return self._text(":error-message")

    def encode(self) -> bytes:
        """Encode this message back to wire bytes."""
        return encode_message(self.headers, self.payload)

    def __repr__(self) -> str:
        """Show headers and a bounded view of the payload (audio payloads are large)."""
        head = self.payload[:32]
        more = "…" if len(self.payload) > 32 else ""
        return (
            f"Message(headers={self.headers!r}, payload={len(self.payload)} bytes {head!r}{more})"
        )


# encoding -----------------------------------------------------------------------------------------


def _encode_header(name: str, value: HeaderInput) -> bytes:
    """Encode one header (name, type code, value bytes), checking the format's limits."""
    if not isinstance(name, str):
        raise TypeError(f"header name must be str, got {type(name).__name__}")
    try:
        raw_name = name.encode("utf-8")
    except UnicodeEncodeError:
        raise EncodeError(f"header name {name!r} is not encodable as UTF-8") from None
    if not 0 < len(raw_name) <= MAX_HEADER_NAME_LENGTH:
        raise EncodeError(
            f"header name must be 1..{MAX_HEADER_NAME_LENGTH} UTF-8 bytes, got {len(raw_name)}"
        )
    head = bytes((len(raw_name),)) + raw_name
    if isinstance(value, bool):
        return head + (b"\x00" if value else b"\x01")
    if isinstance(value, str):
        try:
            raw = value.encode("utf-8")
        except UnicodeEncodeError:
            raise EncodeError(f"header {name!r}: string value is not encodable as UTF-8") from None
        code = HeaderType.STRING
    elif isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        code = HeaderType.BYTE_ARRAY
    elif isinstance(value, _FixedInt):
        return head + bytes((value._code,)) + value._struct.pack(value.value)
    elif isinstance(value, uuid.UUID):
        return head + b"\x09" + value.bytes
    elif isinstance(value, datetime):
        try:
            stamp = Timestamp.from_datetime(value)
        except ValueError as exc:
            raise EncodeError(f"header {name!r}: {exc}") from None
        return head + b"\x08" + _I64.pack(stamp.value)
    else:
        raise TypeError(
            f"header {name!r}: unsupported value type {type(value).__name__}; "
            "wrap integers in Byte/Short/Integer/Long/Timestamp"
        )
    if len(raw) > MAX_HEADER_VALUE_LENGTH:
        raise EncodeError(
            f"header {name!r}: value is {len(raw)} bytes, limit {MAX_HEADER_VALUE_LENGTH}"
        )
    return head + bytes((code,)) + _U16.pack(len(raw)) + raw


_MEMO_MAX_ENTRIES = 512
_MEMO_MAX_VALUE = 256
_header_memo: dict[tuple[str, type, object], bytes] = {}


def _encode_header_memo(name: str, value: HeaderInput) -> bytes:
    """Encode one header, memoising short string/bool ones: event headers repeat endlessly."""
    kind = type(value)
    if kind is bool or (kind is str and len(cast(str, value)) <= _MEMO_MAX_VALUE):
        key = (name, kind, value)
        encoded = _header_memo.get(key)
        if encoded is None:
            encoded = _encode_header(name, value)
            if len(_header_memo) >= _MEMO_MAX_ENTRIES:
                _header_memo.clear()
            _header_memo[key] = encoded
        return encoded
    return _encode_header(name, value)


def encode_headers(headers: HeadersInput) -> bytes:
    """Encode a headers block (mapping or ordered pairs), refusing duplicates and oversize."""
    if isinstance(headers, Mapping):  # keys are unique by construction
        parts = [_encode_header_memo(name, value) for name, value in headers.items()]
    else:
        pairs = list(headers)
        parts = [_encode_header_memo(name, value) for name, value in pairs]
        if len({name for name, _ in pairs}) != len(pairs):
            seen: set[str] = set()
            for name, _ in pairs:
                if name in seen:
                    raise EncodeError(f"duplicate header {name!r}")
                seen.add(name)
    block = b"".join(parts)
    if len(block) > MAX_HEADERS_LENGTH:
        raise EncodeError(f"headers block is {len(block)} bytes, limit {MAX_HEADERS_LENGTH}")
    return block


def encode_raw(headers_block: bytes, payload: bytes | bytearray | memoryview = b"") -> bytes:
    """Frame an encoded headers block and a payload with lengths and CRCs; headers unchecked.

    This is the framing step of :func:`encode_message`; tests and emulators also use it to
    build deliberately malformed header blocks that still carry correct CRCs.
    """
    headers_length = len(headers_block)
    total = MIN_MESSAGE_LENGTH + headers_length + len(payload)
    if total > 0xFFFFFFFF:
        raise EncodeError(f"message of {total} bytes does not fit a uint32 length")
    prelude = _PRELUDE.pack(total, headers_length)
    head = prelude + _U32.pack(zlib.crc32(prelude)) + headers_block
    crc = zlib.crc32(payload, zlib.crc32(head))
    return b"".join((head, payload, _U32.pack(crc)))


def encode_message(headers: HeadersInput, payload: bytes | bytearray | memoryview = b"") -> bytes:
    """Encode one complete message from headers (mapping or ordered pairs) and a payload."""
    if len(payload) > MAX_PAYLOAD_LENGTH:
        raise EncodeError(f"payload is {len(payload)} bytes, limit {MAX_PAYLOAD_LENGTH}")
    return encode_raw(encode_headers(headers), payload)


# decoding -----------------------------------------------------------------------------------------

_FIXED_WIDTH: dict[int, tuple[int, struct.Struct, Callable[[int], HeaderValue]]] = {
    HeaderType.BYTE: (1, Byte._struct, Byte),
    HeaderType.SHORT: (2, Short._struct, Short),
    HeaderType.INTEGER: (4, Integer._struct, Integer),
    HeaderType.LONG: (8, Long._struct, Long),
    HeaderType.TIMESTAMP: (8, Timestamp._struct, Timestamp),
}
_HEADER_CACHE_MAX_ENTRIES = 256
_HEADER_CACHE_MAX_BLOCK = 1024


def _decode_headers(block: bytes) -> dict[str, HeaderValue]:
    """Parse a complete headers block into an ordered dict; a named error for each defect."""
    headers: dict[str, HeaderValue] = {}
    end = len(block)
    pos = 0
    while pos < end:
        name_length = block[pos]
        pos += 1
        if name_length == 0:
            raise HeaderNameError(f"empty header name at offset {pos - 1} of the headers block")
        type_at = pos + name_length
        if type_at >= end:
            raise TruncatedHeaderError(
                f"header name at offset {pos - 1} runs past the headers block"
            )
        try:
            name = block[pos:type_at].decode("utf-8")
        except UnicodeDecodeError:
            raise HeaderNameError(f"header name at offset {pos - 1} is not valid UTF-8") from None
        if name in headers:
            raise DuplicateHeaderError(f"duplicate header {name!r}")
        code = block[type_at]
        pos = type_at + 1
        value: HeaderValue
        if code == HeaderType.STRING or code == HeaderType.BYTE_ARRAY:
            if pos + 2 > end:
                raise TruncatedHeaderError(
                    f"header {name!r}: value length runs past the headers block"
                )
            (length,) = _U16.unpack_from(block, pos)
            pos += 2
            if length > MAX_HEADER_VALUE_LENGTH:
                raise InvalidHeaderValueError(
                    f"header {name!r}: value is {length} bytes, limit {MAX_HEADER_VALUE_LENGTH}"
                )
            if pos + length > end:
                raise TruncatedHeaderError(f"header {name!r}: value runs past the headers block")
            raw = block[pos : pos + length]
            pos += length
            if code == HeaderType.STRING:
                try:
                    value = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise InvalidHeaderValueError(
                        f"header {name!r}: string value is not valid UTF-8"
                    ) from None
            else:
                value = raw
        elif code == HeaderType.BOOL_TRUE:
            value = True
        elif code == HeaderType.BOOL_FALSE:
            value = False
        elif code == HeaderType.UUID:
            if pos + 16 > end:
                raise TruncatedHeaderError(f"header {name!r}: uuid runs past the headers block")
            value = uuid.UUID(bytes=block[pos : pos + 16])
            pos += 16
        else:
            fixed = _FIXED_WIDTH.get(code)
            if fixed is None:
                raise UnknownHeaderTypeError(f"header {name!r}: unknown value type code {code}")
            width, unpacker, kind = fixed
            if pos + width > end:
                raise TruncatedHeaderError(f"header {name!r}: value runs past the headers block")
            value = kind(unpacker.unpack_from(block, pos)[0])
            pos += width
        headers[name] = value
    return headers


def _check_prelude(
    data: bytes | bytearray, pos: int, max_headers: int, max_payload: int
) -> tuple[int, int, int]:
    """Validate the prelude at ``pos``; return (total length, headers length, prelude CRC)."""
    total, headers_length, prelude_crc = _PRELUDE_CRC.unpack_from(data, pos)
    computed = zlib.crc32(data[pos : pos + 8])
    if computed != prelude_crc:
        raise PreludeCRCError(
            f"prelude CRC mismatch: message says {prelude_crc:#010x}, bytes give {computed:#010x}"
        )
    if total < MIN_MESSAGE_LENGTH:
        raise InvalidLengthError(f"total length {total} is below the minimum {MIN_MESSAGE_LENGTH}")
    if headers_length > total - MIN_MESSAGE_LENGTH:
        raise InvalidLengthError(
            f"headers length {headers_length} does not fit in total length {total}"
        )
    if headers_length > max_headers:
        raise InvalidLengthError(f"headers length {headers_length} exceeds the limit {max_headers}")
    payload_length = total - MIN_MESSAGE_LENGTH - headers_length
    if payload_length > max_payload:
        raise InvalidLengthError(f"payload length {payload_length} exceeds the limit {max_payload}")
    return total, headers_length, prelude_crc


class _HeaderCache:
    """Bounded memo of parsed headers blocks: Transcribe repeats the same few on every message."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[bytes, dict[str, HeaderValue]] = {}

    def parse(self, block: bytes) -> dict[str, HeaderValue]:
        """Return a fresh dict of the block's headers, parsing only blocks not seen recently."""
        cached = self._entries.get(block)
        if cached is not None:
            return cached.copy()
        headers = _decode_headers(block)
        if len(block) <= _HEADER_CACHE_MAX_BLOCK:
            if len(self._entries) >= _HEADER_CACHE_MAX_ENTRIES:
                self._entries.clear()
            self._entries[block] = headers.copy()
        return headers


_SHARED_CACHE = _HeaderCache()


def _build_message(
    view: memoryview,
    pos: int,
    total: int,
    headers_length: int,
    prelude_crc: int,
    cache: _HeaderCache,
) -> Message:
    """Check the message CRC of a complete message at ``pos`` and build the Message."""
    crc_at = pos + total - 4
    (expected,) = _U32.unpack_from(view, crc_at)
    computed = zlib.crc32(view[pos + 8 : crc_at], prelude_crc)
    if computed != expected:
        raise MessageCRCError(
            f"message CRC mismatch: message says {expected:#010x}, bytes give {computed:#010x}"
        )
    headers_at = pos + PRELUDE_LENGTH
    payload_at = headers_at + headers_length
    headers = cache.parse(bytes(view[headers_at:payload_at])) if headers_length else {}
    return Message(headers, bytes(view[payload_at:crc_at]))


def decode_message(
    data: bytes | bytearray | memoryview,
    *,
    max_headers_length: int = MAX_HEADERS_LENGTH,
    max_payload_length: int = MAX_PAYLOAD_LENGTH,
) -> Message:
    """Decode exactly one whole message (e.g. one WebSocket frame); short or extra bytes fail."""
    if not isinstance(data, (bytes, bytearray)):
        data = bytes(data)
    size = len(data)
    if size < PRELUDE_LENGTH:
        raise IncompleteMessageError(
            f"{size} bytes is shorter than the {PRELUDE_LENGTH}-byte prelude"
        )
    total, headers_length, prelude_crc = _check_prelude(
        data, 0, max_headers_length, max_payload_length
    )
    if size < total:
        raise IncompleteMessageError(f"message declares {total} bytes but only {size} are present")
    if size > total:
        raise TrailingDataError(f"{size - total} bytes follow the {total}-byte message")
    with memoryview(data) as view:
        return _build_message(view, 0, total, headers_length, prelude_crc, _SHARED_CACHE)


class Decoder:
    """Incremental decoder: feed bytes split anywhere, get whole messages; a defect is final."""

    __slots__ = (
        "_buffer",
        "_cache",
        "_closed",
        "_failure",
        "_max_headers",
        "_max_payload",
        "_need",
    )

    def __init__(
        self,
        *,
        max_headers_length: int = MAX_HEADERS_LENGTH,
        max_payload_length: int = MAX_PAYLOAD_LENGTH,
    ) -> None:
        """Create a decoder; lower limits bound the memory one message may claim."""
        self._buffer = bytearray()
        self._need = PRELUDE_LENGTH  # buffered bytes required before parsing can progress
        self._failure: EventStreamError | None = None
        self._closed = False
        self._max_headers = max_headers_length
        self._max_payload = max_payload_length
        self._cache = _HeaderCache()

    @property
    def pending(self) -> int:
        """Number of buffered bytes that do not yet form a whole message."""
        return len(self._buffer)

    @property
    def failed(self) -> bool:
        """True once a defect was met; every further call raises."""
        return self._failure is not None

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Add bytes and return every message they complete, in order.

        On a defect the error is raised, carries the messages completed before it in
        ``.decoded``, and the decoder refuses all further input.
        """
        if self._failure is not None or self._closed:
            self._refuse()
        buffer = self._buffer
        source: bytes | bytearray
        if buffer:
            buffer += data
            if len(buffer) < self._need:
                return []
            source = buffer
        else:
            source = data if isinstance(data, (bytes, bytearray)) else bytes(data)
            if len(source) < PRELUDE_LENGTH:
                buffer += source
                return []
        messages: list[Message] = []
        end = len(source)
        pos = 0
        need = PRELUDE_LENGTH
        try:
            with memoryview(source) as view:
                while end - pos >= PRELUDE_LENGTH:
                    total, headers_length, prelude_crc = _check_prelude(
                        source, pos, self._max_headers, self._max_payload
                    )
                    if end - pos < total:
                        need = total
                        break
                    messages.append(
                        _build_message(view, pos, total, headers_length, prelude_crc, self._cache)
                    )
                    pos += total
                if source is not buffer and pos < end:
                    buffer += view[pos:]
        except EventStreamError as exc:
            buffer.clear()
            exc.decoded = messages
            self._failure = exc
            raise
        if source is buffer:
            if pos == end:
                buffer.clear()
            elif pos:
                del buffer[:pos]
        self._need = need
        return messages

    def close(self) -> None:
        """Declare the end of input; raise if a partial message is buffered. Later feeds fail."""
        if self._failure is not None or self._closed:
            self._refuse()
        self._closed = True
        if self._buffer:
            error = IncompleteMessageError(
                f"stream ended inside a message ({len(self._buffer)} bytes buffered)"
            )
            self._buffer.clear()
            self._failure = error
            raise error

    def _refuse(self) -> NoReturn:
        """Raise the error for input arriving after a defect or after close()."""
        if self._failure is not None:
            raise DecoderFailedError(f"decoder already failed: {self._failure}") from self._failure
        raise DecoderFailedError("decoder is closed")


# Transcribe helpers -------------------------------------------------------------------------------

_AUDIO_EVENT_HEADERS = encode_headers(
    [
        (":message-type", "event"),
        (":event-type", "AudioEvent"),
        (":content-type", "application/octet-stream"),
    ]
)


def audio_event(pcm: bytes | bytearray | memoryview) -> bytes:
    """Encode an unsigned Transcribe AudioEvent (§5.2); empty payload = end-of-stream marker."""
    if len(pcm) > MAX_PAYLOAD_LENGTH:
        raise EncodeError(f"payload is {len(pcm)} bytes, limit {MAX_PAYLOAD_LENGTH}")
    return encode_raw(_AUDIO_EVENT_HEADERS, pcm)


def event_message(
    event_type: str, payload: bytes | bytearray | memoryview, content_type: str = "application/json"
) -> bytes:
    """Encode an ``event`` message, headers ordered like the service's (type first, §6.4)."""
    return encode_message(
        [(":event-type", event_type), (":content-type", content_type), (":message-type", "event")],
        payload,
    )


def _compact_json(document: object) -> bytes:
    """Serialise JSON without spaces, the way the service's own frames look."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


_TRANSCRIPT_EVENT_HEADERS = encode_headers(
    [
        (":event-type", "TranscriptEvent"),
        (":content-type", "application/json"),
        (":message-type", "event"),
    ]
)


def transcript_event(body: bytes | Mapping[str, object]) -> bytes:
    """Encode a TranscriptEvent (§6.1) from JSON bytes or a JSON-able mapping (emulator side)."""
    payload = body if isinstance(body, bytes) else _compact_json(body)
    if len(payload) > MAX_PAYLOAD_LENGTH:
        raise EncodeError(f"payload is {len(payload)} bytes, limit {MAX_PAYLOAD_LENGTH}")
    return encode_raw(_TRANSCRIPT_EVENT_HEADERS, payload)


def exception_message(exception_type: str, message: str) -> bytes:
    """Encode a service exception (§6.2): ``:exception-type``, body ``{"Message": ...}``."""
    return encode_message(
        [
            (":exception-type", exception_type),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        _compact_json({"Message": message}),
    )


@dataclass(frozen=True, slots=True)
class ServiceException:
    """A vendor-side failure carried in the stream: its type/code and human-readable text."""

    type: str
    message: str


def parse_exception(message: Message) -> ServiceException | None:
    """Extract the exception of an ``exception`` or ``error`` message; None for anything else.

    Exception bodies are JSON ``{"Message": ...}`` (``message`` accepted as a fallback);
    a body that is not such JSON is returned as text so that no vendor error is lost.
    """
    kind = message.message_type
    if kind == "error":
        return ServiceException(message.error_code or "UnknownError", message.error_message or "")
    if kind != "exception":
        return None
    text = message.payload.decode("utf-8", errors="replace")
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if isinstance(document, dict):
        found = document.get("Message", document.get("message"))
        if isinstance(found, str):
            text = found
    return ServiceException(message.exception_type or "UnknownException", text)
