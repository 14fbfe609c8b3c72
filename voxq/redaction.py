"""One redaction layer for every process: secret values and credential shapes never reach a
log line, an error text stored in Redis or an API answer (DESIGN.md invariant 6).

Two sources of truth: the configured secret VALUES (every SecretStr of the settings, the Redis
passwords, and per-connection temporary tokens registered at runtime), removed wherever they
appear; and the usual credential shapes (Authorization headers, X-Amz-Security-Token and other
signed-request fields, ``key=``/``token=`` query parameters, ``Bearer …``), removed whatever
their value. ``redact`` applies both to one text; ``install`` makes every log record of the
process pass through it (a record factory, so handlers added later, and records of any
logger, are covered). The core holds it so that the API, the producer and the workers share it.
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, SecretStr

MASK = "***"
MIN_SECRET = 6  # shorter values are not registered: masking them would garble ordinary text

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()  # longest first, so a secret containing another goes whole

#: credential shapes; group 1 (the name) is kept, the value becomes ``***``
PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"(?i)\b((?:proxy-)?authorization\s*[:=]\s*\"?(?:bearer;?|token|basic|"
               r"aws4-hmac-sha256)?\s*)[^\s\"',;]+"),
    re.compile(r"(?i)\b((?:x-amz-security-token|x-amz-signature|x-amz-credential|"
               r"x-api-key|x-api-access-key|x-goog-api-key|api-key|x-dashscope-apikey)"
               r"\"?\s*[:=]\s*\"?)[^\s\"'&,;]+"),
    re.compile(r"(?i)([?&;](?:key|api_key|apikey|token|access_token|auth_token|secret|password|"
               r"signature|x-amz-[a-z-]+)=)[^&\s\"'#]+"),
    re.compile(r"\b((?:[Bb]earer;?|BEARER|[Tt]oken)\s+)(?=\S*\d)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"(?i)(\"(?:api_key|apikey|token|access_token|secret|password|"
               r"authorization)\"\s*:\s*\")[^\"]+"),
    re.compile(r"(?i)(://[^/\s:@]*:)[^@\s/]+(?=@)"),  # user:password@ in URLs
    # voxq's own API keys (the id stays readable) and browser tokens, wherever they appear
    re.compile(r"\b(vxk_[0-9a-f]{12}_)[A-Za-z0-9_-]{20,}"),
    re.compile(r"\b(vxt_)[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+"),
)


def register_secret(value: str | SecretStr | None) -> None:
    """Redact ``value`` from now on wherever it appears (a key, a temporary token)."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if not value or len(value) < MIN_SECRET:
        return
    global _secrets
    with _lock:
        if value not in _secrets:
            _secrets = tuple(sorted({*_secrets, value}, key=len, reverse=True))


def register_settings(settings: BaseModel) -> None:
    """Register every SecretStr value of ``settings`` and the passwords of its Redis URLs."""
    for name in type(settings).model_fields:
        value = getattr(settings, name, None)
        if isinstance(value, SecretStr):
            register_secret(value)
        elif isinstance(value, str) and "://" in value and "@" in value:
            _register_url_password(value)


def _register_url_password(url: str) -> None:
    for part in url.split(","):
        try:
            password = urlsplit(part.strip()).password
        except ValueError:
            continue
        if password:
            register_secret(password)
            register_secret(unquote(password))


def secrets() -> tuple[str, ...]:
    """The registered secret values (for tests and for adapters that redact bytes)."""
    return _secrets


def redact(text: str) -> str:
    """``text`` with every registered secret and every credential shape shown as ``***``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    for pattern in PATTERNS:
        text = pattern.sub(r"\1" + MASK, text)
    return text


class _Redacted:
    """A log argument whose text had a secret: formats as the redacted text (str and repr)."""

    __slots__ = ("_repr", "_str")

    def __init__(self, s: str, r: str):
        self._str, self._repr = s, r

    def __str__(self) -> str:
        return self._str

    def __repr__(self) -> str:
        return self._repr


def _clean_arg(arg: Any) -> Any:
    if arg is None or isinstance(arg, bool | int | float):
        return arg
    try:
        s, r = str(arg), repr(arg)
    except Exception:  # an object that cannot print itself is left to logging's own handling
        return arg
    rs, rr = redact(s), redact(r)
    if rs == s and rr == r:
        return arg
    return rs if isinstance(arg, str) else _Redacted(rs, rr)


def redact_record(record: logging.LogRecord) -> None:
    """Redact a log record in place: its message, arguments, exception and stack text."""
    if isinstance(record.msg, str):
        record.msg = redact(record.msg)
    else:
        record.msg = _clean_arg(record.msg)
    args = record.args
    if isinstance(args, tuple):
        record.args = tuple(_clean_arg(a) for a in args)
    elif isinstance(args, dict):
        record.args = {k: _clean_arg(v) for k, v in args.items()}
    if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        record.exc_text = redact(text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


class RedactingFilter(logging.Filter):
    """A logging filter form of the layer (for handlers configured elsewhere); keeps records."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact the record in place."""
        redact_record(record)
        return True


_installed = False


def install(settings: BaseModel | None = None) -> None:
    """Register the settings' secrets and make every log record of the process redacted at
    creation (idempotent; every entry point calls it)."""
    global _installed
    if settings is not None:
        register_settings(settings)
    with _lock:
        if _installed:
            return
        base = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = base(*args, **kwargs)
            redact_record(record)
            return record

        logging.setLogRecordFactory(factory)
        _installed = True
