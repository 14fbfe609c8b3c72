"""voxq-ws client frames built without websockets' per-frame path: parsed back by the
websockets frame parser (server side) for every length class, masks fresh each frame."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from workers.vendors.voxqws.protocol import MaskSource, client_binary_frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 3200, 65535, 65536, 200_000])
def test_frame_parses_as_one_masked_binary_frame(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    masks = MaskSource()
    data = client_binary_frame(payload, masks.next())
    reader = StreamReader()
    reader.feed_data(data)
    parser = Frame.parse(reader.read_exact, mask=True, max_size=None, extensions=[])
    try:
        next(parser)
        raise AssertionError("frame incomplete")
    except StopIteration as done:
        frame = done.value
    assert frame.opcode == Opcode.BINARY and frame.fin and bytes(frame.data) == payload
    assert data[1] & 0x80  # masked, as RFC 6455 requires of clients
    assert not reader.buffer  # exactly one frame, nothing left over


def test_masks_are_fresh_and_refilled() -> None:
    masks = MaskSource()
    seen = [masks.next() for _ in range(3000)]  # crosses the 1024-mask refill
    assert all(len(m) == 4 for m in seen)
    assert len(set(seen)) > 2900  # 32-bit random masks: collisions are rare
