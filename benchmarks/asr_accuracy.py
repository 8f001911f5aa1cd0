"""Recognition accuracy through the public client over loopback, against offline faster-whisper.

For every speech clip of a data folder (default speech-dev; ``--data`` for another, repeatable):
  * offline: plain faster-whisper in this process (same model, 30 s window, greedy, temperature 0,
    cpu_threads = the usable cores): the reference WER (benchmarks/baseline.py);
  * Recognize: the whole clip through the client;
  * StreamingRecognize: the clip as LINEAR16 in 20 ms chunks (a microphone client's size), paced at
    ``--pace`` times real time, with interim results, ``end_of_audio`` after the last chunk; the
    transcript is the finals joined.
Per source (the manifest's ``kind``, or the source repository) and overall: WER of each; for the
stream's partials, the committed-word error rate (words a partial marked committed — the first
stability × n words — that the utterance's final does not have in that place) and the churn (words
shown in a partial that the next partial or the final rewrote, per final word); the first partial's
delay (audio ms from the utterance's start to the arrival of its first partial); and, for clips of
30 s or more (long dictation), the stream's WER beside Recognize's and the words lost or repeated.
Prints Markdown and writes JSON.

    .venv/bin/python benchmarks/asr_accuracy.py [--data DIR ...] [--pace 2] [--streams 4]
        [--server-arg=--flag --server-arg=value ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.baseline import Baseline, usable_cores  # noqa: E402
from benchmarks.server_process import start_server, stop_server  # noqa: E402
from tests.helpers import DATA_DIR, normalize, word_errors  # noqa: E402
from voxwire import AsyncClient, AudioEncoding, RecognitionConfig, read_audio_file  # noqa: E402
from voxwire.audio import chunk_bytes_for, iter_chunks  # noqa: E402

CHUNK_MS = 20
LONG_S = 30.0


@dataclass
class Clip:
    id: str
    path: Path
    text: str
    duration_s: float
    group: str
    data: str


@dataclass
class StreamOutcome:
    text: str = ""
    committed_words: int = 0
    committed_errors: int = 0
    churned_words: int = 0
    final_words: int = 0
    first_partial_ms: list[float] = field(default_factory=list)


def load(data: Path, max_duration_s: float) -> list[Clip]:
    clips = []
    for line in (data / "manifest.jsonl").read_text().splitlines():
        item = json.loads(line)
        if float(item["duration_s"]) > max_duration_s:
            continue
        group = item.get("kind") or str(item["source"]).split(":")[0]
        text = item.get("text_spoken") or item["text"]
        duration = float(item["duration_s"])
        clips.append(Clip(item["id"], data / item["audio"], text, duration, group, data.name))
    return clips


def _aligned_hits(a: list[str], b: list[str]) -> int:
    """Words of ``a`` matched in place by ``b`` (the longest common subsequence)."""
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], (prev + 1) if x == y else max(row[j], row[j - 1])
    return row[len(b)]


def _rewritten(shown: list[str], after: list[str]) -> int:
    """Words of ``shown`` beyond its common prefix with ``after``."""
    kept = 0
    for x, y in zip(shown, after, strict=False):
        if x != y:
            break
        kept += 1
    return len(shown) - kept


async def _paced(pcm: bytes, chunk_bytes: int, pace: float, started: list[float]) -> AsyncIterator[bytes]:
    start = time.monotonic()
    started.append(start)
    step = CHUNK_MS / 1000 / pace
    for i, chunk in enumerate(iter_chunks(pcm, chunk_bytes)):
        delay = start + i * step - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        yield chunk


async def stream_clip(client: AsyncClient, clip: Clip, pace: float) -> StreamOutcome:
    audio = read_audio_file(clip.path)
    config = RecognitionConfig(
        encoding=AudioEncoding.LINEAR16,
        sample_rate_hz=audio.sample_rate_hz,
        channels=audio.channels,
        interim_results=True,
    )
    chunk = chunk_bytes_for(audio.sample_rate_hz, audio.channels, CHUNK_MS)
    out = StreamOutcome()
    finals: list[str] = []
    # Per utterance: the words shown by the last partial and the committed words seen so far.
    shown: dict[int, list[str]] = {}
    committed: dict[int, list[str]] = {}
    started: list[float] = []
    async for update in client.stream(_paced(audio.data, chunk, pace, started), config, timeout_s=600):
        result = update.result
        if result is None:
            continue
        index = result.utterance_index
        words = normalize(result.transcript)
        if index in shown:
            out.churned_words += _rewritten(shown[index], words)
        if not result.is_final:
            if index not in shown:
                audio_ms = (time.monotonic() - started[0]) * 1000 * pace
                out.first_partial_ms.append(audio_ms - result.audio_start_ms)
            shown[index] = words
            fixed = words[: round(result.stability * len(words))]
            if len(fixed) > len(committed.get(index, [])):
                committed[index] = fixed
            continue
        shown.pop(index, None)
        finals.append(result.transcript)
        out.final_words += len(words)
        fixed = committed.pop(index, [])
        out.committed_words += len(fixed)
        out.committed_errors += len(fixed) - _aligned_hits(fixed, words)
    out.text = " ".join(finals)
    return out


async def run_server(
    target: str, clips: list[Clip], pace: float, streams: int
) -> tuple[list[str], list[StreamOutcome]]:
    async with AsyncClient(target, timeout_s=600) as client:
        recognized = []
        for clip in clips:
            recognized.append((await client.recognize(str(clip.path))).text)
        gate = asyncio.Semaphore(streams)

        async def one(clip: Clip) -> StreamOutcome:
            async with gate:
                return await stream_clip(client, clip, pace)

        streamed = await asyncio.gather(*(one(c) for c in clips))
    return recognized, list(streamed)


def _wer(pairs: list[tuple[str, str]]) -> tuple[float, int, int]:
    errors = total = 0
    for ref, hyp in pairs:
        e, n = word_errors(ref, hyp)
        errors += e
        total += n
    return errors / max(total, 1), errors, total


def _lost_and_repeated(reference: str, hypothesis: str) -> tuple[int, int]:
    """Reference words the hypothesis lacks, and hypothesis words beyond the reference's (both
    from an LCS alignment): deletions and insertions, the marks of a bad cut."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    hits = _aligned_hits(ref, hyp)
    return len(ref) - hits, len(hyp) - hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", type=Path, help="data folder(s) (default speech-dev)")
    parser.add_argument("--max-duration", type=float, default=120.0, help="skip clips longer than this (s)")
    parser.add_argument("--pace", type=float, default=2.0, help="stream pacing, times real time")
    parser.add_argument("--streams", type=int, default=4, help="clips streamed at once")
    parser.add_argument("--no-offline", action="store_true", help="skip the faster-whisper reference")
    parser.add_argument("--server-arg", action="append", default=[], help="a voxwire-server flag (repeat)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "asr_accuracy.json"))
    args = parser.parse_args()
    folders: list[Path] = args.data or [DATA_DIR]
    for folder in folders:
        if not (folder / "manifest.jsonl").is_file():
            raise SystemExit(f"no manifest.jsonl in {folder} (speech-dev: set VOXWIRE_DATA_DIR or --data)")
    clips = [c for folder in folders for c in load(folder, args.max_duration)]

    offline: list[str] = []
    if not args.no_offline:
        model = Baseline(usable_cores())
        offline = [model.transcribe(str(c.path))[1] for c in clips]
        del model
    proc, target = start_server(*args.server_arg)
    try:
        recognized, streamed = asyncio.run(run_server(target, clips, args.pace, args.streams))
    finally:
        stop_server(proc)

    report: dict[str, Any] = {"server_args": args.server_arg, "pace": args.pace, "sets": {}}
    for folder in folders:
        picked = [i for i, c in enumerate(clips) if c.data == folder.name]
        groups: dict[str, list[int]] = defaultdict(list)
        for i in picked:
            groups[clips[i].group].append(i)
        rows = []
        for name, idx in [*sorted(groups.items()), ("all", picked)]:
            row: dict[str, Any] = {"group": name, "clips": len(idx)}
            for key, texts in (("offline", offline), ("recognize", recognized)):
                if texts:
                    row[key] = _wer([(clips[i].text, texts[i]) for i in idx])
            row["stream"] = _wer([(clips[i].text, streamed[i].text) for i in idx])
            committed = sum(streamed[i].committed_words for i in idx)
            row["committed_error_rate"] = sum(streamed[i].committed_errors for i in idx) / max(committed, 1)
            row["committed_words"] = committed
            finals = sum(streamed[i].final_words for i in idx)
            row["churn"] = sum(streamed[i].churned_words for i in idx) / max(finals, 1)
            delays = [d for i in idx for d in streamed[i].first_partial_ms]
            row["first_partial_p50_ms"] = statistics.median(delays) if delays else None
            rows.append(row)
        long_rows = []
        for i in picked:
            if clips[i].duration_s >= LONG_S:
                lost, extra = _lost_and_repeated(clips[i].text, streamed[i].text)
                long_rows.append(
                    {
                        "id": clips[i].id,
                        "duration_s": clips[i].duration_s,
                        "recognize": _wer([(clips[i].text, recognized[i])])[0],
                        "stream": _wer([(clips[i].text, streamed[i].text)])[0],
                        "stream_deleted": lost,
                        "stream_inserted": extra,
                    }
                )
        report["sets"][folder.name] = {
            "rows": rows,
            "long": long_rows,
            "clips": [
                {
                    "id": clips[i].id,
                    "reference": clips[i].text,
                    **({"offline": offline[i]} if offline else {}),
                    "recognize": recognized[i],
                    "stream": streamed[i].text,
                }
                for i in picked
            ],
        }
        _print(folder.name, rows, long_rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"\nmachine: {os.cpu_count()} vCPU; server args: {' '.join(args.server_arg) or '(defaults)'}")
    print(f"wrote {args.out}")


def _pct(cell: tuple[float, int, int] | None) -> str:
    return "–" if cell is None else f"{100 * cell[0]:.1f} % ({cell[1]}/{cell[2]})"


def _print(name: str, rows: list[dict[str, Any]], long_rows: list[dict[str, Any]]) -> None:
    print(f"\n### {name}\n")
    print(
        "| source | clips | offline faster-whisper | Recognize | StreamingRecognize "
        "| committed errors | churn | first partial p50 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        first = "–" if r["first_partial_p50_ms"] is None else f"{r['first_partial_p50_ms']:.0f} ms"
        print(
            f"| {r['group']} | {r['clips']} | {_pct(r.get('offline'))} | {_pct(r.get('recognize'))} "
            f"| {_pct(r['stream'])} | {100 * r['committed_error_rate']:.1f} % of {r['committed_words']} "
            f"| {100 * r['churn']:.0f} % | {first} |"
        )
    if long_rows:
        print("\n| long clip | s | Recognize WER | stream WER | stream words lost | stream words extra |")
        print("|---|---|---|---|---|---|")
        for r in long_rows:
            print(
                f"| {r['id']} | {r['duration_s']:.0f} | {100 * r['recognize']:.1f} % "
                f"| {100 * r['stream']:.1f} % | {r['stream_deleted']} | {r['stream_inserted']} |"
            )


if __name__ == "__main__":
    main()
