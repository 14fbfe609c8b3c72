"""JSON of one live transcript entry, shared by the SSE and WebSocket routes and the hub
(rendered once per entry, whatever the number of followers)."""

from __future__ import annotations

import json
from typing import Any

from api.transcript_formats import segment_dict
from voxq.records import decode_transcript


def event_data(fields: Any) -> str:
    """JSON of one transcript entry: the JSON transcript's segment shape, plus result_id;
    MalformedRecord if the entry is malformed. Accepts a mapping or Redis's flat field list."""
    if not hasattr(fields, "items"):
        flat = list(fields)
        fields = {flat[i]: flat[i + 1] for i in range(0, len(flat) - 1, 2)}
    t = decode_transcript(fields)
    d = segment_dict(t, 0)
    d["seq"] = t.seq  # the worker's index of a final; null for partials
    d["result_id"] = t.result_id
    return json.dumps(d, separators=(",", ":"))
