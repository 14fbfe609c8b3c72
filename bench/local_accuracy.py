"""What the offline `local` engine is good for: its word error rate and decoding speed.

Decodes an audio file with the `local` recognizer in this process, exactly as a worker feeds
it (100 ms blocks of 16 kHz PCM, then end of audio), and compares the finals with a reference
text: word error rate = (substitutions + deletions + insertions) / reference words, after
lower-casing and dropping punctuation. Speed is audio seconds per second of decoding on one
core (the decoders run one at a time here). Baseline in the same run: the cost of only reading
and converting the file, so the figure is the recognizer's own.

    python bench/local_accuracy.py                           # the bundled sample and its text
    python bench/local_accuracy.py call.wav --reference call.txt
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from voxq.audio import convert, read_file  # noqa: E402
from voxq.settings import Settings  # noqa: E402
from workers.vendors.base import RecognizerConfig  # noqa: E402
from workers.vendors.local.stt import LocalOptions, LocalRecognizer  # noqa: E402

SAMPLE = REPO / "voxq" / "samples" / "support-call.flac"


def words(text: str) -> list[str]:
    """Lower-case words without punctuation."""
    return re.findall(r"[a-z0-9']+", text.lower())


def word_errors(reference: list[str], hypothesis: list[str]) -> int:
    """Levenshtein distance between two word sequences."""
    prev = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        cur = [i]
        for j, hyp in enumerate(hypothesis, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ref != hyp)))
        prev = cur
    return prev[-1]


async def recognise(pcm: bytes) -> str:
    """The finals' text of mono 16 kHz PCM."""
    rec = LocalRecognizer(RecognizerConfig(session_id="bench", rate=16000, channels=1,
                                           language="en-US", options=LocalOptions()), Settings())
    await rec.start()
    try:
        for i in range(0, len(pcm), 3200):
            await rec.send(pcm[i:i + 3200])
        await rec.finish()
        return " ".join([t.text async for t in rec.results() if t.is_final])
    finally:
        await rec.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("audio", nargs="?", default=str(SAMPLE))
    parser.add_argument("--reference", help="reference text (default: the sample's .txt)")
    args = parser.parse_args()
    audio = Path(args.audio)
    reference = Path(args.reference) if args.reference else audio.with_suffix(".txt")
    t0 = time.process_time()
    x, rate = read_file(audio)
    pcm = convert(x, rate, 16000, 1)
    convert_cpu = time.process_time() - t0
    seconds = len(pcm) / 32000
    t0 = time.process_time()
    text = asyncio.run(recognise(pcm))
    decode_cpu = time.process_time() - t0
    ref = words(reference.read_text())
    errors = word_errors(ref, words(text))
    print(json.dumps({
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version()},
        "file": audio.name, "audio_seconds": round(seconds, 2),
        "reference_words": len(ref), "word_errors": errors,
        "word_error_rate": round(errors / max(1, len(ref)), 3),
        "decode_cpu_seconds": round(decode_cpu, 2),
        "real_time_factor": round(seconds / decode_cpu, 2) if decode_cpu else None,
        "baseline_read_convert_cpu_seconds": round(convert_cpu, 3),
        "hypothesis": text,
    }, indent=2))


if __name__ == "__main__":
    main()
