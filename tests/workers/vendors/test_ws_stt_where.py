"""`where_of`: how every recognizer names its endpoint in messages (errors, status reasons,
logs) — host, port and path, never user info or the query that carries tokens and signatures."""

from __future__ import annotations

import pytest

from workers.vendors.ws_stt import where_of


@pytest.mark.parametrize(("url", "shown"), [
    ("wss://api.deepgram.com/v1/listen?model=nova-3", "wss://api.deepgram.com/v1/listen"),
    ("ws://127.0.0.1:8765/v3/ws?token=tok-secret", "ws://127.0.0.1:8765/v3/ws"),
    ("wss://user:pa55word@vendor.example:443/x", "wss://vendor.example:443/x"),
    ("wss://transcribestreaming.us-east-1.amazonaws.com:8443/stream-transcription-websocket"
     "?X-Amz-Credential=AKIA%2F&X-Amz-Security-Token=sess&X-Amz-Signature=abc",
     "wss://transcribestreaming.us-east-1.amazonaws.com:8443/stream-transcription-websocket"),
    ("ws://[::1]:9000/listen", "ws://[::1]:9000/listen"),
    ("ws://host:notaport/p", "ws://host/p"),
])
def test_where_shows_host_port_and_path_only(url: str, shown: str) -> None:
    assert where_of(url) == shown
