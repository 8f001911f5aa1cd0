"""How much cross-stream batching saves: the server's window decoder, one window at a time against
batches of N, on the same speech-dev clips in the same run.

Drives the engine directly (no gRPC): windows are submitted through `WhisperRecognizer.decode`,
sequentially (the baseline) and all at once with asyncio.gather (the batching worker then forms
batches of up to N). Prints a Markdown table (ms per window, speed-up) and writes JSON.

    .venv/bin/python benchmarks/batch_scaling.py [--sizes 1,4,8,16] [--min-s 3] [--max-s 6.5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from faster_whisper.audio import decode_audio  # noqa: E402

from tests.helpers import DATA_DIR  # noqa: E402
from voxwire_server.domain import DecodeOptions  # noqa: E402
from voxwire_server.engines.base import WindowRequest  # noqa: E402
from voxwire_server.engines.whisper import WhisperRecognizer, tune_allocator  # noqa: E402


async def measure(
    recognizer: WhisperRecognizer,
    workers: WhisperRecognizer | None,
    audio: list[np.ndarray],
    sizes: list[int],
    repeats: int,
) -> list[dict[str, float]]:
    async def all_at_once(on: WhisperRecognizer, requests: list[WindowRequest]) -> float:
        started = time.perf_counter()
        await asyncio.gather(*(on.decode(r, final=True, deadline=0) for r in requests))
        return (time.perf_counter() - started) / len(requests)

    rows = []
    for n in sizes:
        requests = [WindowRequest(a, DecodeOptions()) for a in audio[:n]]
        sequential, batched, spread = [], [], []
        for _ in range(repeats):
            started = time.perf_counter()
            for request in requests:
                await recognizer.decode(request, final=True, deadline=0)
            sequential.append((time.perf_counter() - started) / n)
            batched.append(await all_at_once(recognizer, requests))
            if workers is not None:
                spread.append(await all_at_once(workers, requests))
        seq, bat = statistics.median(sequential), statistics.median(batched)
        row = {"batch": n, "sequential_ms": seq * 1000, "batched_ms": bat * 1000, "speedup": seq / bat}
        if spread:
            row["workers_ms"] = statistics.median(spread) * 1000
            row["workers_speedup"] = seq / statistics.median(spread)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,4,8,16")
    parser.add_argument("--min-s", type=float, default=3.0)
    parser.add_argument("--max-s", type=float, default=6.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--workers", type=int, default=2, help="also batch on this many decoder workers (1: skip)"
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "batch_scaling.json"))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    items = [json.loads(line) for line in (DATA_DIR / "manifest.jsonl").read_text().splitlines()]
    picked = [i for i in items if args.min_s <= float(i["duration_s"]) <= args.max_s][: max(sizes)]
    if len(picked) < max(sizes):
        raise SystemExit(f"only {len(picked)} clips between {args.min_s} and {args.max_s} s")
    audio = [decode_audio(str(DATA_DIR / i["audio"])) for i in picked]
    tune_allocator()
    recognizer = WhisperRecognizer(max_batch=max(sizes))
    recognizer.warm_up()
    workers = WhisperRecognizer(max_batch=max(sizes), workers=args.workers) if args.workers > 1 else None
    if workers is not None:
        workers.warm_up()
    try:
        rows = asyncio.run(measure(recognizer, workers, audio, sizes, args.repeats))
    finally:
        recognizer.close()
        if workers is not None:
            workers.close()
    print(
        f"\n{len(picked)} speech-dev clips of {args.min_s}-{args.max_s} s, medians of {args.repeats} runs\n"
    )
    extra = f" {args.workers} workers, ms/window | speed-up |" if workers is not None else ""
    print("| windows | one at a time, ms/window | batched, ms/window | speed-up |" + extra)
    print("|---|---|---|---|" + ("---|---|" if extra else ""))
    for r in rows:
        line = f"| {r['batch']} | {r['sequential_ms']:.0f} | {r['batched_ms']:.0f} | {r['speedup']:.2f}× |"
        if "workers_ms" in r:
            line += f" {r['workers_ms']:.0f} | {r['workers_speedup']:.2f}× |"
        print(line)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
