"""Shared test helpers: the speech-dev data set and word error rate."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Shipped with the repository (public domain, samples/README.md): speech for tests that must run on
# every clone, with or without ../shared.
SAMPLE_JFK = ROOT / "samples" / "jfk.flac"
DATA_DIR = Path(os.environ.get("VOXWIRE_DATA_DIR", ROOT.parent / "shared" / "data" / "speech-dev"))
# The sibling dev set (speech only: no noise clips, no pairs).
DATA_DIR_2 = Path(os.environ.get("VOXWIRE_DATA_DIR_2", DATA_DIR.parent / "speech-dev-2"))


@functools.cache
def jfk_pcm() -> bytes:
    """SAMPLE_JFK as 16 kHz mono little-endian int16 (LINEAR16)."""
    from voxwire_server.domain import AudioFormat, Encoding
    from voxwire_server.engines.audio import decode_clip, float_to_pcm16

    samples = decode_clip(SAMPLE_JFK.read_bytes(), AudioFormat(Encoding.FLAC))
    return float_to_pcm16(samples).astype("<i2").tobytes()


_NUMBERS = {
    "0": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five",
    "6": "six", "7": "seven", "8": "eight", "9": "nine", "10": "ten",
}  # fmt: skip


@dataclass(frozen=True)
class Clip:
    id: str
    path: Path
    text: str
    duration_s: float


def require_binary(command: str, package: str, require_variable: str) -> str:
    """The path of a program the tests run (a real Redis, HAProxy); skips when it is missing, or
    fails when the variable is 1 (as in CI)."""
    binary = shutil.which(command)
    if binary is None:
        reason = f"{command} is not on PATH (Debian: apt-get install {package})"
        if os.environ.get(require_variable) == "1":
            pytest.fail(f"{reason} and {require_variable}=1")
        pytest.skip(reason)
    return binary


def _require(data: Path, variable: str) -> Path:
    if (data / "manifest.jsonl").is_file():
        return data
    reason = f"{data.name} data not found at {data} (set {variable})"
    if os.environ.get("VOXWIRE_REQUIRE_DATA") == "1":
        pytest.fail(reason + " and VOXWIRE_REQUIRE_DATA=1")
    pytest.skip(reason)


def require_data() -> Path:
    """The speech-dev directory; skips (or fails with VOXWIRE_REQUIRE_DATA=1) when it is absent."""
    return _require(DATA_DIR, "VOXWIRE_DATA_DIR")


def require_data_2() -> Path:
    """The speech-dev-2 directory; skips (or fails with VOXWIRE_REQUIRE_DATA=1) when it is absent."""
    return _require(DATA_DIR_2, "VOXWIRE_DATA_DIR_2")


def speech_clips(ids: list[str]) -> list[Clip]:
    data = require_data()
    by_id = {}
    for line in (data / "manifest.jsonl").read_text().splitlines():
        item = json.loads(line)
        by_id[item["id"]] = Clip(
            item["id"], data / item["audio"], item.get("text_spoken") or item["text"], item["duration_s"]
        )
    return [by_id[i] for i in ids]


def noise_clips() -> list[Path]:
    data = require_data()
    lines = (data / "noise" / "manifest.jsonl").read_text().splitlines()
    return [data / json.loads(line)["audio"] for line in lines]


def normalize(text: str) -> list[str]:
    text = text.lower().replace("-", " ")
    text = re.sub(r"[^a-z0-9' ]+", " ", text)
    words = [w.strip("'") for w in text.split()]
    return [_NUMBERS.get(w, w) for w in words if w]


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edit distance in words, reference length) after normalisation."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[len(hyp)], len(ref)


def wer(pairs: list[tuple[str, str]]) -> float:
    """Corpus WER over (reference, hypothesis) pairs."""
    errors = total = 0
    for ref, hyp in pairs:
        e, n = word_errors(ref, hyp)
        errors += e
        total += n
    return errors / max(total, 1)
