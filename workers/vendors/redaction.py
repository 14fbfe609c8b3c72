"""Keep vendor credentials out of logs and error messages: what every vendor adapter needs
(the websockets library logs every handshake header at debug level, and vendors sometimes
echo a key or signed URL back in an error). It builds on the process-wide layer in
``voxq.redaction`` (configured secret values and credential shapes), which every log record
and every VendorError text passes through; this adds per-adapter secrets and patterns."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from voxq.redaction import redact, register_secret

__all__ = ["RedactingFilter", "register_secret", "vendor_text", "websocket_logger"]

MAX_VENDOR_TEXT = 300


def vendor_text(text: str, secrets: Iterable[str] = (),
                patterns: Iterable[re.Pattern[str]] = ()) -> str:
    """One bounded line of vendor text with every secret and every ``patterns`` value (group 1
    kept, the rest of the match replaced) shown as ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    for pattern in patterns:
        text = pattern.sub(r"\1***", text)
    return " ".join(redact(text).split())[:MAX_VENDOR_TEXT]


class RedactingFilter(logging.Filter):
    """Replace secret header values (``> Name: value`` debug lines) and query values matching
    ``patterns`` in the websockets library's log records; always keeps the record."""

    def __init__(self, headers: Iterable[str] = (), patterns: Iterable[re.Pattern[str]] = ()):
        super().__init__()
        self.headers = frozenset(h.lower() for h in headers)
        self.patterns = tuple(patterns)

    def _sub(self, value: str) -> str:
        for p in self.patterns:
            value = p.sub(r"\1***", value)
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact the record in place."""
        args = record.args
        if isinstance(args, tuple) and len(args) == 2 and isinstance(args[0], str) \
                and args[0].lower() in self.headers:
            record.args = (args[0], "***")
        elif isinstance(args, tuple) and self.patterns:
            record.args = tuple(self._sub(a) if isinstance(a, str) else a for a in args)
        if self.patterns and isinstance(record.msg, str):
            record.msg = self._sub(record.msg)
        return True


def websocket_logger(name: str, headers: Iterable[str] = (),
                     patterns: Iterable[re.Pattern[str]] = ()) -> logging.Logger:
    """The logger to hand to ``websockets.connect(logger=…)``, with redaction installed."""
    logger = logging.getLogger(f"{name}.websocket")
    logger.addFilter(RedactingFilter(headers, patterns))
    return logger
