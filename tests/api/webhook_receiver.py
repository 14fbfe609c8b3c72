"""A webhook receiver as its own process for the tests: records every POST (headers and raw
body, one JSON line each) and answers by path: ``/fail/<n>/<name>`` fails its first n requests
with 503, ``/gone`` answers 410, anything else 200. Prints its port, then serves until killed.

Run: python webhook_receiver.py LOGFILE
"""

from __future__ import annotations

import base64
import json
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
SEEN: Counter[str] = Counter()


class Handler(BaseHTTPRequestHandler):
    log_path = ""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        with LOCK:
            SEEN[self.path] += 1
            n = SEEN[self.path]
            code = 200
            parts = self.path.strip("/").split("/")
            if parts[0] == "gone":
                code = 410
            elif parts[0] == "fail" and n <= int(parts[1]):
                code = 503
            with open(self.log_path, "a") as f:
                f.write(json.dumps({"path": self.path, "code": code,
                                    "headers": {k.lower(): v for k, v in self.headers.items()},
                                    "body": base64.b64encode(body).decode()}) + "\n")
        self.send_response(code)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


def main() -> None:
    Handler.log_path = sys.argv[1]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
