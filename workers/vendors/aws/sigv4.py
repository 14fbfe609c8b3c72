"""AWS SigV4: presigned Transcribe WebSocket URLs and header signing (pure; clock passed in).

Facts from ``docs/protocols/aws-transcribe.md``, "SigV4 presigned URL".  The building blocks (canonical
request, string to sign, signing key, signature) are plain functions so that other AWS
clients (Polly over HTTPS) reuse them through :func:`sign_headers`.

Secrets (secret key, session token) never appear in exception messages; nothing here logs.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from urllib.parse import quote, unquote, urlsplit

__all__ = [
    "ALGORITHM",
    "EMPTY_SHA256",
    "MAX_PRESIGN_EXPIRES",
    "TRANSCRIBE_PATH",
    "TRANSCRIBE_PORT",
    "TRANSCRIBE_SERVICE",
    "UNSIGNED_HEADERS",
    "PresignExpiryError",
    "SigV4Error",
    "amz_date",
    "canonical_headers",
    "canonical_query_string",
    "canonical_request",
    "canonical_uri",
    "credential_scope",
    "presign_transcribe_url",
    "sign_headers",
    "signature",
    "signing_key",
    "string_to_sign",
    "transcribe_host",
    "uri_encode",
]

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
TRANSCRIBE_SERVICE = "transcribe"
"""Service name in the credential scope (not ``transcribestreaming``, §2.1)."""
TRANSCRIBE_PORT = 8443
TRANSCRIBE_PATH = "/stream-transcription-websocket"
MAX_PRESIGN_EXPIRES = 300
"""Transcribe refuses presigned URLs valid for longer than 300 s."""

UNSIGNED_HEADERS = frozenset(
    {
        "connection",
        "expect",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "x-amzn-trace-id",
    }
)
"""Headers never signed: hop-by-hop ones proxies may rewrite, tracing, user-agent."""

_REGION = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::[0-9]{1,5})?")
_AUTH_HEADERS = frozenset({"authorization", "x-amz-date", "x-amz-security-token"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


class SigV4Error(ValueError):
    """Signing inputs are invalid (never carries a secret in its message)."""


class PresignExpiryError(SigV4Error):
    """The requested presigned-URL lifetime is outside 1..300 seconds."""


# building blocks ----------------------------------------------------------------------------------


def uri_encode(text: str, *, keep_slash: bool = False) -> str:
    """Percent-encode UTF-8 per RFC 3986: only ``A-Za-z0-9-_.~`` stay; uppercase hex."""
    return quote(text, safe="/~" if keep_slash else "~")


def amz_date(now: datetime) -> str:
    """Format an aware instant as ``YYYYMMDDTHHMMSSZ`` UTC; naive datetimes are ambiguous."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise SigV4Error("signing time must be a timezone-aware datetime")
    return now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def canonical_query_string(params: Mapping[str, str] | Iterable[tuple[str, str]]) -> str:
    """Encode names and values, sort by encoded name then value, join ``name=value`` by ``&``."""
    items = params.items() if isinstance(params, Mapping) else params
    encoded = sorted((uri_encode(name), uri_encode(value)) for name, value in items)
    return "&".join(f"{name}={value}" for name, value in encoded)


def canonical_uri(path: str) -> str:
    """Canonical URI (non-S3): dot and empty segments removed, then encoded (``%`` → ``%25``).

    ``path`` is the path as it appears in the URL, i.e. already percent-encoded once;
    SigV4 for services other than S3 encodes it a second time.
    """
    if not path:
        return "/"
    segments: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    normalized = ("/" if path.startswith("/") else "") + "/".join(segments)
    if path.endswith("/") and segments:
        normalized += "/"
    return uri_encode(normalized or "/", keep_slash=True)


def canonical_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> tuple[str, str]:
    """Return (canonical headers block ending in newline, signed-headers list) for headers.

    Names are lowercased and sorted, values trimmed with inner whitespace runs collapsed,
    repeated names joined with commas in the order given.
    """
    items = headers.items() if isinstance(headers, Mapping) else headers
    merged: dict[str, list[str]] = {}
    for name, value in items:
        merged.setdefault(name.strip().lower(), []).append(" ".join(value.split()))
    names = sorted(merged)
    block = "".join(f"{name}:{','.join(merged[name])}\n" for name in names)
    return block, ";".join(names)


def canonical_request(
    method: str,
    uri: str,
    query: str,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    payload_hash: str,
) -> str:
    """Assemble the canonical request from canonical URI and query, raw headers, payload hash."""
    block, signed = canonical_headers(headers)
    return "\n".join((method.upper(), uri, query, block, signed, payload_hash))


def credential_scope(date_stamp: str, region: str, service: str) -> str:
    """``YYYYMMDD/region/service/aws4_request``."""
    return f"{date_stamp}/{region}/{service}/aws4_request"


def string_to_sign(timestamp: str, scope: str, request: str) -> str:
    """String to sign: algorithm, ``X-Amz-Date``, scope, hex SHA-256 of the canonical request."""
    digest = hashlib.sha256(request.encode("utf-8")).hexdigest()
    return f"{ALGORITHM}\n{timestamp}\n{scope}\n{digest}"


def _hmac(key: bytes, message: str) -> bytes:
    """HMAC-SHA256 of a UTF-8 message."""
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


def signing_key(secret_key: str, date_stamp: str, region: str, service: str) -> bytes:
    """Derive the day/region/service signing key from the secret key (HMAC chain)."""
    key = _hmac(("AWS4" + secret_key).encode("utf-8"), date_stamp)
    key = _hmac(key, region)
    key = _hmac(key, service)
    return _hmac(key, "aws4_request")


def signature(key: bytes, to_sign: str) -> str:
    """Lowercase hex HMAC-SHA256 of the string to sign under the derived signing key."""
    return hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


# input checks -------------------------------------------------------------------------------------


def _check_region(region: str) -> None:
    """Refuse region names that could alter a host name or a scope."""
    if not isinstance(region, str) or not _REGION.fullmatch(region):
        raise SigV4Error(f"invalid AWS region name {region!r}")


def _check_credentials(access_key: str, secret_key: str, session_token: str | None) -> None:
    """Refuse empty or malformed credentials without echoing any of them."""
    if (
        not isinstance(access_key, str)
        or not access_key
        or "/" in access_key
        or not access_key.isprintable()
    ):
        raise SigV4Error("access key id is empty or malformed")
    if not isinstance(secret_key, str) or not secret_key:
        raise SigV4Error("secret access key is empty or not a string")
    if session_token is not None and not isinstance(session_token, str):
        raise SigV4Error("session token must be a string")


def transcribe_host(region: str) -> str:
    """``transcribestreaming.<region>.amazonaws.com:8443``: the signed Host value, port included."""
    _check_region(region)
    return f"transcribestreaming.{region}.amazonaws.com:{TRANSCRIBE_PORT}"


# presigned WebSocket URL --------------------------------------------------------------------------


def presign_transcribe_url(
    *,
    region: str,
    access_key: str,
    secret_key: str,
    session_token: str | None = None,
    params: Mapping[str, str],
    now: datetime,
    expires: int = MAX_PRESIGN_EXPIRES,
    host: str | None = None,
    scheme: str = "wss",
    path: str = TRANSCRIBE_PATH,
) -> str:
    """Build the SigV4 query-signed ``wss://`` URL that opens a Transcribe streaming session (§2).

    ``params`` are the Transcribe query parameters (``language-code``, ``sample-rate``…).
    ``host`` overrides ``transcribestreaming.<region>.amazonaws.com:8443`` (e.g. an emulator's
    ``127.0.0.1:PORT``); it is signed verbatim, so it must equal the Host header the client
    sends (port included unless it is the scheme's default).  The session token, when
    given, is part of the signed canonical query.  The signature is appended last.
    """
    _check_region(region)
    _check_credentials(access_key, secret_key, session_token)
    if type(expires) is not int or not 1 <= expires <= MAX_PRESIGN_EXPIRES:
        raise PresignExpiryError(
            f"expires must be an integer in 1..{MAX_PRESIGN_EXPIRES} seconds, got {expires!r}"
        )
    if scheme not in ("wss", "ws"):
        raise SigV4Error(f"scheme must be 'wss' or 'ws', got {scheme!r}")
    if host is None:
        host = transcribe_host(region)
    elif not _HOST.fullmatch(host):
        raise SigV4Error(f"invalid host {host!r}")
    if not path.startswith("/") or canonical_uri(path) != path:
        raise SigV4Error(f"path must be absolute and already canonical, got {path!r}")
    for name, value in params.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"query parameter names and values must be str (parameter {name!r})")
        if name.lower().startswith("x-amz-"):
            raise SigV4Error(f"query parameter {name!r} is reserved for the signature")
    timestamp = amz_date(now)
    date_stamp = timestamp[:8]
    scope = credential_scope(date_stamp, region, TRANSCRIBE_SERVICE)
    query: list[tuple[str, str]] = [
        ("X-Amz-Algorithm", ALGORITHM),
        ("X-Amz-Credential", f"{access_key}/{scope}"),
        ("X-Amz-Date", timestamp),
        ("X-Amz-Expires", str(expires)),
        ("X-Amz-SignedHeaders", "host"),
    ]
    if session_token:
        query.append(("X-Amz-Security-Token", session_token))
    query.extend(params.items())
    canonical_query = canonical_query_string(query)
    request = canonical_request("GET", path, canonical_query, {"host": host}, EMPTY_SHA256)
    key = signing_key(secret_key, date_stamp, region, TRANSCRIBE_SERVICE)
    sig = signature(key, string_to_sign(timestamp, scope, request))
    return f"{scheme}://{host}{path}?{canonical_query}&X-Amz-Signature={sig}"


# header signing -----------------------------------------------------------------------------------


def _host_from_url(scheme: str, netloc: str) -> str:
    """Host header a client sends for this URL: lowercase, no userinfo, default port dropped."""
    parts = urlsplit(f"{scheme}://{netloc}")
    hostname = parts.hostname
    if not hostname:
        raise SigV4Error("URL has no host")
    if ":" in hostname:
        hostname = f"[{hostname}]"
    try:
        port = parts.port
    except ValueError:
        raise SigV4Error("URL port is invalid") from None
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        return f"{hostname}:{port}"
    return hostname


def _url_query_pairs(query: str) -> list[tuple[str, str]]:
    """Split a URL query into decoded (name, value) pairs; ``+`` is a literal plus, not a space."""
    pairs: list[tuple[str, str]] = []
    for piece in query.split("&"):
        if not piece:
            continue
        name, _, value = piece.partition("=")
        pairs.append((unquote(name, errors="strict"), unquote(value, errors="strict")))
    return pairs


def sign_headers(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    region: str,
    service: str,
    access_key: str,
    secret_key: str,
    session_token: str | None,
    now: datetime,
    *,
    include_content_sha256: bool = False,
) -> dict[str, str]:
    """Sign an HTTP request with SigV4 in ``Authorization``; return the full header set to send.

    The result is ``headers`` minus any stale ``Authorization``/``X-Amz-Date``/
    ``X-Amz-Security-Token``, plus fresh ``X-Amz-Date``, ``X-Amz-Security-Token`` (with
    temporary credentials), optionally ``X-Amz-Content-SHA256``, and ``Authorization``.
    Host is signed as the HTTP client will send it (from the URL, default port dropped)
    unless ``headers`` carries one.  The URL query is decoded and re-encoded canonically.
    """
    _check_region(region)
    _check_credentials(access_key, secret_key, session_token)
    if not service or not _REGION.fullmatch(service):
        raise SigV4Error(f"invalid service name {service!r}")
    parts = urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS:
        raise SigV4Error(f"URL scheme must be http or https, got {parts.scheme!r}")
    lowered = [name.lower() for name in headers]
    if len(set(lowered)) != len(lowered):
        raise SigV4Error("headers contain the same name twice with different case")
    timestamp = amz_date(now)
    date_stamp = timestamp[:8]
    payload_hash = hashlib.sha256(body).hexdigest()
    out = {name: value for name, value in headers.items() if name.lower() not in _AUTH_HEADERS}
    out["X-Amz-Date"] = timestamp
    if session_token:
        out["X-Amz-Security-Token"] = session_token
    if include_content_sha256:
        out = {name: value for name, value in out.items() if name.lower() != "x-amz-content-sha256"}
        out["X-Amz-Content-SHA256"] = payload_hash
    signed = {name: value for name, value in out.items() if name.lower() not in UNSIGNED_HEADERS}
    if "host" not in {name.lower() for name in signed}:
        signed["host"] = _host_from_url(parts.scheme, parts.netloc)
    try:
        query = canonical_query_string(_url_query_pairs(parts.query))
    except UnicodeDecodeError:
        raise SigV4Error("URL query is not valid percent-encoded UTF-8") from None
    request = canonical_request(method, canonical_uri(parts.path), query, signed, payload_hash)
    scope = credential_scope(date_stamp, region, service)
    sig = signature(
        signing_key(secret_key, date_stamp, region, service),
        string_to_sign(timestamp, scope, request),
    )
    _, signed_names = canonical_headers(signed)
    credential = f"Credential={access_key}/{scope}"
    out["Authorization"] = (
        f"{ALGORITHM} {credential}, SignedHeaders={signed_names}, Signature={sig}"
    )
    return out
