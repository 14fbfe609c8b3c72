"""The file endpoint's pure parts: container sniffing and the bounded read-ahead file."""

from __future__ import annotations

import os
import queue

import pytest
from hypothesis import given
from hypothesis import strategies as st

from producer.ingest.core import Rejected
from producer.ingest.file_decode import FAKE_LENGTH, Container, StreamFile, sniff


@pytest.mark.parametrize(("head", "want"), [
    (b"RIFF\0\0\0\0WAVEfmt ", Container.WAV), (b"fLaC\0\0\0\x22", Container.FLAC),
    (b"OggS\0\2", Container.OGG), (b"ID3\4\0", Container.MP3), (b"\xff\xfb\x90\x00", Container.MP3),
])
def test_sniff(head: bytes, want: Container) -> None:
    assert sniff(head) is want


@given(st.binary(max_size=16))
def test_sniff_any_bytes(head: bytes) -> None:
    try:
        sniff(head)
    except Rejected as e:
        assert e.code == 1003


def stream(pieces: list[bytes], window: int = 8) -> StreamFile:
    q: queue.Queue[bytes | None] = queue.Queue()
    for p in pieces:
        q.put(p)
    q.put(None)
    return StreamFile(q, window=window)


@given(st.lists(st.binary(max_size=20), max_size=10), st.lists(st.integers(0, 30), max_size=20))
def test_reads_return_the_stream_in_order(pieces: list[bytes], sizes: list[int]) -> None:
    f = stream(pieces)
    got = b"".join(f.read(n) for n in sizes) + f.read()
    assert got == b"".join(pieces)


def test_look_back_length_query_and_refused_seeks() -> None:
    f = stream([b"0123456789", b"abcdefghij"], window=8)
    assert f.read(4) == b"0123"
    assert f.seek(0) == 0 and f.read(4) == b"0123"          # header reread
    assert f.seek(0, os.SEEK_END) == FAKE_LENGTH and f.tell() == FAKE_LENGTH
    assert f.seek(4) == 4 and f.read(12) == b"456789abcdef"  # back from the length query
    with pytest.raises(OSError, match="cannot be streamed"):
        f.seek(0)                                           # beyond the kept window
    with pytest.raises(OSError):
        f.seek(-128, os.SEEK_END)                           # a tag at the end
