"""A strict emulator of the one Kubernetes API call a worker makes: a JSON merge patch of its own
pod's annotations (``PATCH /api/v1/namespaces/NS/pods/NAME``).

Strict about what the real API server requires of that call: a bearer token of the pod's
service account (401 otherwise), the RBAC grant (403 for any other pod, as the worker's Role
allows only its namespace), ``application/merge-patch+json`` (415 otherwise), a JSON body that is
an object (400), an existing pod (404). Answers carry a ``Status`` object with a ``message``, as
the API server's do. Plain HTTP on loopback (the TLS part is httpx's, not ours).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class KubeApiEmulator:
    """Pods in one namespace, their annotations, and every PATCH received."""

    def __init__(self, namespace: str, pods: list[str], token: str):
        self.namespace = namespace
        self.token = token
        self.annotations: dict[str, dict[str, str]] = {p: {} for p in pods}
        self.patches: list[tuple[str, dict[str, Any]]] = []
        self.history: dict[str, list[str]] = {p: [] for p in pods}
        self.fail_next: int = 0  # answer this many requests with 500
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Base URL (what https://KUBERNETES_SERVICE_HOST:PORT is in a pod)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> KubeApiEmulator:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        emu = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _status(self, code: int, reason: str, message: str) -> None:
                body = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                   "message": message, "reason": reason, "code": code}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._status(405, "MethodNotAllowed", "only PATCH is emulated")

            def do_PATCH(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                with emu.lock:
                    if emu.fail_next > 0:
                        emu.fail_next -= 1
                        self._status(500, "InternalError", "etcdserver: request timed out")
                        return
                if self.headers.get("Authorization") != f"Bearer {emu.token}":
                    self._status(401, "Unauthorized", "Unauthorized")
                    return
                parts = self.path.split("?")[0].strip("/").split("/")
                if len(parts) != 6 or parts[:3] != ["api", "v1", "namespaces"] or parts[4] != "pods":
                    self._status(404, "NotFound", f"the server could not find {self.path}")
                    return
                ns, name = parts[3], parts[5]
                if ns != emu.namespace:
                    self._status(403, "Forbidden",
                                 f'pods "{name}" is forbidden: cannot patch resource "pods" '
                                 f'in the namespace "{ns}"')
                    return
                ctype = self.headers.get("Content-Type", "").split(";")[0].strip()
                if ctype != "application/merge-patch+json":
                    self._status(415, "UnsupportedMediaType",
                                 f"the body of the request was in an unknown format: {ctype}")
                    return
                try:
                    patch = json.loads(raw)
                except ValueError as e:
                    self._status(400, "BadRequest", f"error decoding patch: {e}")
                    return
                if not isinstance(patch, dict):
                    self._status(400, "BadRequest", "patch is not a JSON object")
                    return
                with emu.lock:
                    if name not in emu.annotations:
                        self._status(404, "NotFound", f'pods "{name}" not found')
                        return
                    emu.patches.append((name, patch))
                    for k, v in ((patch.get("metadata") or {}).get("annotations") or {}).items():
                        if v is None:
                            emu.annotations[name].pop(k, None)
                        elif not isinstance(v, str):
                            self._status(400, "BadRequest",
                                         f"annotation {k}: expected a string, got {v!r}")
                            return
                        else:
                            emu.annotations[name][k] = v
                            emu.history[name].append(v)
                    pod = {"kind": "Pod", "apiVersion": "v1",
                           "metadata": {"name": name, "namespace": ns,
                                        "annotations": dict(emu.annotations[name])}}
                body = json.dumps(pod).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler
