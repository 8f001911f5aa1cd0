"""Recognition latency through the public client over loopback, against plain faster-whisper.

Starts `voxwire-server` on a free loopback port, then for each speech-dev clip (voice-assistant
length, <= 10 s):
  * baseline: faster-whisper transcribing the clip in this process (same model, greedy, temperature 0)
    with cpu_threads = the usable cores, as users run it (benchmarks/baseline.py); a one-thread
    run is shown too, as an extra row;
  * Recognize: the whole clip through the client;
  * streaming: the clip paced in real time (100 ms chunks); the figure is the time from the last
    audio chunk leaving the client to the final result arriving ("final after end of audio"): the
    client sends end_of_audio at once, so the endpointer does not wait for silence;
  * streaming with the endpointer: the clip, then 1.5 s of silence, paced the same way, end_of_audio
    only after the silence; the figure is the time from the clip's last chunk leaving the client to
    the final arriving, the endpointer's trailing-silence wait (600 ms) included: what a speaker
    who stops talking waits for.
Prints a Markdown table (medians and p95; ratios against the baseline of the same run) and writes JSON.

    .venv/bin/python benchmarks/recognize_latency.py [--clips 12] [--max-seconds 600]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.baseline import Baseline, usable_cores  # noqa: E402
from benchmarks.server_process import start_server, stop_server  # noqa: E402
from tests.helpers import DATA_DIR, wer  # noqa: E402
from voxwire import AsyncClient, AudioEncoding, RecognitionConfig, read_audio_file  # noqa: E402
from voxwire.audio import chunk_bytes_for, iter_chunks  # noqa: E402


def load_clips(count: int) -> list[dict[str, object]]:
    items = [json.loads(line) for line in (DATA_DIR / "manifest.jsonl").read_text().splitlines()]
    short = [i for i in items if float(i["duration_s"]) <= 10.0]
    # Spread the pick over the corpus order so every source is represented.
    step = max(1, len(short) // count)
    return short[::step][:count]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def baseline(clips: list[dict[str, object]], cpu_threads: int) -> tuple[list[float], list[str]]:
    model = Baseline(cpu_threads)
    times, texts = [], []
    for clip in clips:
        seconds, text = model.transcribe(str(DATA_DIR / str(clip["audio"])))
        times.append(seconds)
        texts.append(text)
    return times, texts


async def paced_chunks(
    pcm: bytes, chunk_bytes: int, chunk_s: float, sent: dict[str, float], trailing_silence_s: float = 0.0
) -> AsyncIterator[bytes]:
    """The clip (then silence) at real time; sent["last_chunk"]: when the clip's last chunk left."""
    start = time.monotonic()
    silence = bytes(int(trailing_silence_s / chunk_s) * chunk_bytes)
    speech_chunks = -(-len(pcm) // chunk_bytes)
    for i, chunk in enumerate([*iter_chunks(pcm, chunk_bytes), *iter_chunks(silence, chunk_bytes)]):
        delay = start + i * chunk_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        yield chunk
        if i == speech_chunks - 1:
            sent["last_chunk"] = time.perf_counter()


async def measure(target: str, clips: list[dict[str, object]]) -> dict[str, list[float] | list[str]]:
    out: dict[str, list[float] | list[str]] = {
        "recognize": [],
        "stream_final": [],
        "endpointed_final": [],
        "recognize_text": [],
        "stream_text": [],
        "endpointed_text": [],
    }
    async with AsyncClient(target, timeout_s=120) as client:
        for clip in clips:
            path = DATA_DIR / str(clip["audio"])
            started = time.perf_counter()
            transcript = await client.recognize(str(path))
            out["recognize"].append(time.perf_counter() - started)  # type: ignore[arg-type]
            out["recognize_text"].append(transcript.text)  # type: ignore[arg-type]

            audio = read_audio_file(path)
            config = RecognitionConfig(
                encoding=AudioEncoding.LINEAR16, sample_rate_hz=audio.sample_rate_hz, channels=audio.channels
            )
            chunk = chunk_bytes_for(audio.sample_rate_hz, audio.channels, 100)
            for key, silence_s in (("stream", 0.0), ("endpointed", 1.5)):
                sent: dict[str, float] = {}
                finals, final_at = [], 0.0
                chunks = paced_chunks(audio.data, chunk, 0.1, sent, silence_s)
                async for update in client.stream(chunks, config):
                    if update.result is not None and update.result.is_final:
                        finals.append(update.result.transcript)
                        final_at = time.perf_counter()
                latency = final_at - sent["last_chunk"]
                out[f"{key}_final"].append(latency if key == "endpointed" else max(0.0, latency))  # type: ignore[arg-type]
                out[f"{key}_text"].append(" ".join(finals))  # type: ignore[arg-type]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument(
        "--max-seconds", type=float, default=600.0, help="stop streaming clips after this long"
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "recognize_latency.json"))
    args = parser.parse_args()
    if not (DATA_DIR / "manifest.jsonl").is_file():
        raise SystemExit(f"speech-dev data not found at {DATA_DIR} (set VOXWIRE_DATA_DIR)")
    clips = load_clips(args.clips)
    total_audio = sum(float(c["duration_s"]) for c in clips)
    if total_audio > args.max_seconds:
        raise SystemExit(f"{total_audio:.0f} s of audio would exceed --max-seconds {args.max_seconds:.0f}")
    refs = [str(c.get("text_spoken") or c["text"]) for c in clips]

    cores = usable_cores()
    base_times, base_texts = baseline(clips, cores)
    one_times, one_texts = baseline(clips, 1) if cores > 1 else (base_times, base_texts)
    proc, target = start_server()
    try:
        got = asyncio.run(measure(target, clips))
    finally:
        stop_server(proc)

    def row(name: str, times: list[float], texts: list[str]) -> dict[str, float | str]:
        return {
            "method": name,
            "p50_ms": statistics.median(times) * 1000,
            "p95_ms": percentile(times, 0.95) * 1000,
            "ratio_p50_vs_baseline": statistics.median(times) / statistics.median(base_times),
            "wer": wer(list(zip(refs, texts, strict=True))),
        }

    threads = f"{cores} thread{'s' if cores > 1 else ''}"
    rows = [
        row(f"faster-whisper offline, in process, {threads} (baseline)", base_times, base_texts),
        *([row("faster-whisper offline, in process, 1 thread", one_times, one_texts)] if cores > 1 else []),
        row("Recognize over loopback (whole clip)", got["recognize"], got["recognize_text"]),  # type: ignore[arg-type]
        row(
            "StreamingRecognize, real time: final after end of audio", got["stream_final"], got["stream_text"]
        ),  # type: ignore[arg-type]
        row(
            "StreamingRecognize, real time, endpointer (600 ms of silence): final after end of clip",
            got["endpointed_final"],  # type: ignore[arg-type]
            got["endpointed_text"],  # type: ignore[arg-type]
        ),
    ]
    print(
        f"\n{len(clips)} speech-dev clips, {total_audio:.1f} s of audio, machine: {os.cpu_count()} vCPU "
        f"({cores} usable)\n"
    )
    print("| method | p50 ms | p95 ms | p50 / baseline | WER |")
    print("|---|---|---|---|---|")
    for r in rows:
        ratio, wer_pct = float(r["ratio_p50_vs_baseline"]), 100 * float(r["wer"])
        print(f"| {r['method']} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {ratio:.2f} | {wer_pct:.1f} % |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    per_clip = [
        {
            "id": c["id"],
            "duration_s": c["duration_s"],
            "baseline_ms": base_times[i] * 1000,
            **{f"{key}_ms": got[key][i] * 1000 for key in ("recognize", "stream_final", "endpointed_final")},
        }
        for i, c in enumerate(clips)
    ]
    Path(args.out).write_text(json.dumps({"clips": per_clip, "rows": rows}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
