"""event-stream codec throughput vs baselines measured in the same run; prints one JSON document.

Decode is compared with botocore's ``EventStreamBuffer`` (the decoder the AWS Python SDKs
use).  botocore has no encoder, so encode is compared with a straightforward reference
encoder (bytes concatenation per header, the obvious way to write it).  Figures are MB/s
of wire bytes (10^6 bytes per second), best and median of several timed repeats.

Run: ``python bench/eventstream.py`` (about 20 s).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import struct
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import botocore
from botocore.eventstream import EventStreamBuffer

from workers.vendors.aws.eventstream import (
    Decoder,
    audio_event,
    decode_message,
    encode_message,
    transcript_event,
)

REPEATS = 7
TARGET_SECONDS = 0.12  # wall time of one repeat
STREAM_CHUNK = 4096  # bytes per feed when decoding a byte stream (TLS record-ish)

TRANSCRIPT = {
    "Transcript": {
        "Results": [
            {
                "ResultId": "12345a67-8bc9-0de1-2f34-a5b678c90d12",
                "StartTime": 1.65,
                "EndTime": 4.165,
                "IsPartial": True,
                "Alternatives": [
                    {
                        "Transcript": "Welcome to Amazon. How can I help you today?",
                        "Items": [
                            {
                                "Content": word,
                                "StartTime": 1.65 + i * 0.3,
                                "EndTime": 1.9 + i * 0.3,
                                "Type": "pronunciation",
                                "VocabularyFilterMatch": False,
                                "Stable": True,
                                "Confidence": 0.97,
                            }
                            for i, word in enumerate(
                                "Welcome to Amazon How can I help you today".split()
                            )
                        ],
                    }
                ],
            }
        ]
    }
}


def reference_encode(headers: list[tuple[str, str]], payload: bytes) -> bytes:
    """Straightforward encoder: string headers only, concatenation, two CRCs."""
    block = b""
    for name, value in headers:
        raw_name, raw_value = name.encode(), value.encode()
        block += bytes([len(raw_name)]) + raw_name + b"\x07"
        block += struct.pack(">H", len(raw_value)) + raw_value
    prelude = struct.pack(">II", 16 + len(block) + len(payload), len(block))
    body = prelude + struct.pack(">I", zlib.crc32(prelude)) + block + payload
    return body + struct.pack(">I", zlib.crc32(body))


AUDIO_HEADERS = [
    (":message-type", "event"),
    (":event-type", "AudioEvent"),
    (":content-type", "application/octet-stream"),
]
TRANSCRIPT_HEADERS = [
    (":event-type", "TranscriptEvent"),
    (":content-type", "application/json"),
    (":message-type", "event"),
]


def timed(run: Callable[[int], None]) -> tuple[int, list[float]]:
    """Calibrate a loop count so a repeat lasts about TARGET_SECONDS; return it and the timings."""
    loops = 1
    while True:
        start = time.perf_counter()
        run(loops)
        elapsed = time.perf_counter() - start
        if elapsed >= TARGET_SECONDS / 4 or loops >= 1 << 20:
            break
        loops *= 2
    loops = max(1, int(loops * TARGET_SECONDS / max(elapsed, 1e-9)))
    samples = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        run(loops)
        samples.append(time.perf_counter() - start)
    return loops, samples


def figures(run: Callable[[int], None], wire_bytes: int, messages: int) -> dict[str, float]:
    """Throughput of ``run``, which processes ``wire_bytes`` in ``messages`` per loop."""
    loops, samples = timed(run)
    best, median = min(samples), statistics.median(samples)
    return {
        "best_mb_s": round(wire_bytes * loops / best / 1e6, 1),
        "median_mb_s": round(wire_bytes * loops / median / 1e6, 1),
        "median_msgs_s": round(messages * loops / median),
    }


def compare(
    name: str,
    ours: Callable[[int], None],
    baseline: Callable[[int], None],
    baseline_name: str,
    wire_bytes: int,
    messages: int,
    payload_bytes: int,
) -> dict[str, object]:
    """Measure ours and the baseline on the same work and report both with their ratio."""
    mine = figures(ours, wire_bytes, messages)
    theirs = figures(baseline, wire_bytes, messages)
    return {
        "case": name,
        "payload_bytes": payload_bytes,
        "messages_per_loop": messages,
        "wire_bytes_per_loop": wire_bytes,
        "voxq": mine,
        "baseline": {"name": baseline_name, **theirs},
        "ratio_median": round(mine["median_mb_s"] / theirs["median_mb_s"], 2),
        "ratio_best": round(mine["best_mb_s"] / theirs["best_mb_s"], 2),
    }


def encode_cases() -> list[dict[str, object]]:
    """Encode: the prebuilt-header helpers and the generic encoder, vs the reference encoder."""
    out = []
    for size in (3200, 16384):
        pcm = os.urandom(size)
        frame = audio_event(pcm)
        assert frame == reference_encode(AUDIO_HEADERS, pcm)

        def ours(loops: int, pcm: bytes = pcm) -> None:
            for _ in range(loops):
                audio_event(pcm)

        def generic(loops: int, pcm: bytes = pcm) -> None:
            for _ in range(loops):
                encode_message(AUDIO_HEADERS, pcm)

        def ref(loops: int, pcm: bytes = pcm) -> None:
            for _ in range(loops):
                reference_encode(AUDIO_HEADERS, pcm)

        out.append(compare(f"audio_event_{size}", ours, ref, "reference", len(frame), 1, size))
        out.append(
            compare(f"encode_message_audio_{size}", generic, ref, "reference", len(frame), 1, size)
        )
    body = json.dumps(TRANSCRIPT).encode()
    frame = transcript_event(body)
    assert frame == reference_encode(TRANSCRIPT_HEADERS, body)

    def ours_json(loops: int) -> None:
        for _ in range(loops):
            encode_message(TRANSCRIPT_HEADERS, body)

    def ref_json(loops: int) -> None:
        for _ in range(loops):
            reference_encode(TRANSCRIPT_HEADERS, body)

    def ours_helper(loops: int) -> None:
        for _ in range(loops):
            transcript_event(body)

    out.append(
        compare(
            "encode_message_transcript", ours_json, ref_json, "reference", len(frame), 1, len(body)
        )
    )
    out.append(
        compare("transcript_event", ours_helper, ref_json, "reference", len(frame), 1, len(body))
    )
    return out


def decode_cases() -> list[dict[str, object]]:
    """Decode one frame per feed (WebSocket framing) and a chunked byte stream, vs botocore."""
    body = json.dumps(TRANSCRIPT).encode()
    samples = {
        "audio_3200": audio_event(os.urandom(3200)),
        "audio_16384": audio_event(os.urandom(16384)),
        "transcript": transcript_event(body),
    }
    out = []
    for label, frame in samples.items():
        payload = len(decode_message(frame).payload)
        batch = 64
        frames = [frame] * batch

        def ours_frames(loops: int, frames: list[bytes] = frames) -> None:
            decoder = Decoder()
            feed = decoder.feed
            for _ in range(loops):
                for one in frames:
                    feed(one)

        def boto_frames(loops: int, frames: list[bytes] = frames) -> None:
            buffer = EventStreamBuffer()
            for _ in range(loops):
                for one in frames:
                    buffer.add_data(one)
                    for _message in buffer:
                        pass

        out.append(
            compare(
                f"decode_frames_{label}",
                ours_frames,
                boto_frames,
                "botocore.eventstream.EventStreamBuffer",
                len(frame) * batch,
                batch,
                payload,
            )
        )

        stream = frame * max(1, (1 << 20) // len(frame))
        chunks = [stream[i : i + STREAM_CHUNK] for i in range(0, len(stream), STREAM_CHUNK)]
        count = len(stream) // len(frame)
        assert len(Decoder().feed(stream)) == count

        def ours_stream(loops: int, chunks: list[bytes] = chunks) -> None:
            for _ in range(loops):
                decoder = Decoder()
                for chunk in chunks:
                    decoder.feed(chunk)

        def boto_stream(loops: int, chunks: list[bytes] = chunks) -> None:
            for _ in range(loops):
                buffer = EventStreamBuffer()
                for chunk in chunks:
                    buffer.add_data(chunk)
                    for _message in buffer:
                        pass

        out.append(
            compare(
                f"decode_stream_{STREAM_CHUNK}B_chunks_{label}",
                ours_stream,
                boto_stream,
                "botocore.eventstream.EventStreamBuffer",
                len(stream),
                count,
                payload,
            )
        )
    return out


def machine() -> dict[str, object]:
    """Where the figures were measured."""
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "zlib": zlib.ZLIB_RUNTIME_VERSION,
        "botocore": botocore.__version__,
    }


def main() -> None:
    """Run every case and print the JSON document."""
    started = time.perf_counter()
    encode = encode_cases()
    decode = decode_cases()
    document = {
        "benchmark": "aws-eventstream-codec",
        "unit": "MB/s of wire bytes (1 MB = 10^6 bytes); ratio = voxq / baseline",
        "repeats": REPEATS,
        "machine": machine(),
        "encode": encode,
        "decode": decode,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    json.dump(document, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
