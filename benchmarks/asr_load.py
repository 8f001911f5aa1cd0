"""Streaming recognition under load: N concurrent real-time streams through the public client.

Starts `voxwire-server` on a free loopback port. For each stream count N (`--streams 1,4,8,16`), N
streams each send a seeded shuffle of speech-dev clips (<= 10 s), every clip followed by 1 s of
digital silence so the server's endpointer fires, paced like a microphone: a chunk of `--chunk-ms`
is sent once its last sample has "been spoken" (stream start + chunk end). Stream starts are
staggered at random over the first second (seeded). A stream starts no new clip after
`--seconds-per-level`; it then sends end-of-audio and gets `--drain-s` to receive its last results
before it is cancelled. Optionally (`--finals-only-streams`) the same is run with interim results off.

Definitions (all times are wall-clock times taken in this client process):
  * endpoint time of an utterance: when the client sent the chunk holding stream position
    END_OF_UTTERANCE.audio_offset_ms + silence_ms (the server's `--silence-ms`, passed by this
    script): the earliest moment the server could know the utterance had ended.
  * final after endpoint: arrival of the utterance's final result minus its endpoint time.
  * END_OF_UTTERANCE lag: arrival of the END_OF_UTTERANCE event minus the endpoint time (how far the
    server's endpointer runs behind the audio; the rest of the final's latency is decoding).
  * first partial: arrival of the utterance's first non-final result minus the time the client sent
    the chunk holding SPEECH_STARTED.audio_offset_ms (the first voiced audio), i.e. "since the
    speaker started". It includes the audio the server waits for before its first partial
    (`--partial-interval-ms`, 500 ms). The JSON also has it measured from the SPEECH_STARTED arrival.
  * churn: words of each partial (normalized as for WER) at their positions; a shown word is
    "changed" when a later partial or the final has a different word, or none, at its position.
    Churn = changed / shown, where a word shown unchanged by successive partials counts once.
  * server RTF: CPU seconds of the server process (utime + stime from /proc/<pid>/stat) during the
    level per second of audio streamed (clips and silence gaps, all streams); CPU % is the same CPU
    time per wall second of the level (100 % = one vCPU).
  * a stream kept up when it ended normally within its drain time, every one of its utterances got
    its final (if it had text) within `--keep-up-final-s` (2 s) after its endpoint time, no
    END_OF_UTTERANCE lagged more than `--keep-up-lag-s` (1 s), and the client never sent a chunk more
    than `--keep-up-lag-s` behind its real-time schedule (server backpressure).
  * WER: corpus WER (tests/helpers.wer) of each stream's finals joined vs the joined references of
    the clips it sent; the baseline column uses the baseline's texts of the same clips.

Baseline, in the same run, before the server starts: plain faster-whisper (same model, int8, greedy,
temperature 0, cpu_threads = the usable cores, as users run it; benchmarks/baseline.py) transcribing
each clip of the pool once; latencies are also shown as ratios to its median per-clip time. A
one-thread run of the same clips is reported beside it, never divided by.

Prints a Markdown table, writes JSON (--out) and a PNG plot of final latency vs streams (--plot).

    .venv/bin/python benchmarks/asr_load.py [--streams 1,4,8,16] [--seconds-per-level 30] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import random
import statistics
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.baseline import Baseline, usable_cores  # noqa: E402
from benchmarks.server_process import START_TIMEOUT_S, start_server, stop_server  # noqa: E402
from tests.helpers import DATA_DIR, normalize, wer  # noqa: E402
from voxwire import AsyncClient, AudioEncoding, RecognitionConfig, VoxwireError, read_audio_file  # noqa: E402
from voxwire.audio import chunk_bytes_for, iter_chunks  # noqa: E402
from voxwire.types import SpeechEventType, StreamUpdate  # noqa: E402

RATE_HZ = 16_000
GAP_S = 1.0  # digital silence after every clip: more than the endpointer's silence_ms
STAGGER_S = 1.0
MAX_CLIPS_PER_STREAM = 200
IDLE_WAIT_S = 30.0


@dataclass(frozen=True, slots=True)
class Clip:
    id: str
    pcm: bytes
    duration_s: float
    reference: str


@dataclass(slots=True)
class Utterance:
    index: int
    speech_offset_ms: int | None = None
    speech_event_at: float | None = None
    partials: list[tuple[float, str]] = field(default_factory=list)
    eou_offset_ms: int | None = None
    eou_at: float | None = None
    final_at: float | None = None
    final_text: str | None = None


@dataclass(slots=True)
class StreamRun:
    index: int
    clip_ids: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    chunk_end_ms: list[float] = field(default_factory=list)
    chunk_sent_at: list[float] = field(default_factory=list)
    max_lateness_s: float = 0.0
    audio_s: float = 0.0
    utterances: dict[int, Utterance] = field(default_factory=dict)
    ended_normally: bool = False
    error: str = ""

    def sent_at(self, position_ms: float, *, start: bool) -> float | None:
        """When the chunk holding this stream position was sent (a start position belongs to the chunk
        that begins there, an end position to the chunk that ends there); past the audio: the last one."""
        if not self.chunk_end_ms:
            return None
        find = bisect.bisect_right if start else bisect.bisect_left
        i = find(self.chunk_end_ms, position_ms)
        return self.chunk_sent_at[min(i, len(self.chunk_sent_at) - 1)]


# ---------------------------------------------------------------- data, baseline, server


def load_pool(max_clips: int) -> list[Clip]:
    items = [json.loads(line) for line in (DATA_DIR / "manifest.jsonl").read_text().splitlines()]
    clips = []
    for item in items:
        if float(item["duration_s"]) > 10.0:
            continue
        audio = read_audio_file(DATA_DIR / item["audio"])
        if audio.encoding is not AudioEncoding.LINEAR16 or (audio.sample_rate_hz, audio.channels) != (
            RATE_HZ,
            1,
        ):
            continue  # every stream is one 16 kHz mono LINEAR16 stream
        reference = str(item.get("text_spoken") or item["text"])
        clips.append(Clip(item["id"], audio.data, len(audio.data) / (2 * RATE_HZ), reference))
    step = max(1, len(clips) // max_clips)
    return clips[::step][:max_clips]


def baseline(clips: list[Clip], cpu_threads: int) -> tuple[dict[str, float], dict[str, str]]:
    import numpy as np

    model = Baseline(cpu_threads)
    times, texts = {}, {}
    for clip in clips:
        samples = np.frombuffer(clip.pcm, np.int16).astype(np.float32) / 32768.0
        times[clip.id], texts[clip.id] = model.transcribe(samples)
    return times, texts


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_idle(pid: int) -> None:
    """Lets a server still decoding a cancelled level's backlog finish before the next level."""
    deadline = time.monotonic() + IDLE_WAIT_S
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        now = cpu_seconds(pid)
        if now - last < 0.05:
            return
        last = now


# ---------------------------------------------------------------- one level


def plan(pool: list[Clip], rng: random.Random) -> list[Clip]:
    order = list(pool)
    rng.shuffle(order)
    return order


async def paced_audio(
    run: StreamRun, clips: list[Clip], t0: float, stop_at: float, chunk_ms: int
) -> AsyncIterator[bytes]:
    chunk_bytes = chunk_bytes_for(RATE_HZ, 1, chunk_ms)
    gap = bytes(2 * int(GAP_S * RATE_HZ))
    samples = 0
    for n in range(MAX_CLIPS_PER_STREAM):
        clip = clips[n % len(clips)]
        if n > 0 and time.monotonic() + clip.duration_s + GAP_S > stop_at:
            return
        run.clip_ids.append(clip.id)
        run.references.append(clip.reference)
        for chunk in iter_chunks(clip.pcm + gap, chunk_bytes):
            samples += len(chunk) // 2
            delay = t0 + samples / RATE_HZ - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                run.max_lateness_s = max(run.max_lateness_s, -delay)
            run.chunk_end_ms.append(samples * 1000 / RATE_HZ)
            run.chunk_sent_at.append(time.monotonic())
            run.audio_s = samples / RATE_HZ
            yield chunk


def record(run: StreamRun, update: StreamUpdate, now: float) -> None:
    if update.speech_event is not None:
        event = update.speech_event
        utt = run.utterances.setdefault(event.utterance_index, Utterance(event.utterance_index))
        if event.type is SpeechEventType.SPEECH_STARTED:
            utt.speech_offset_ms, utt.speech_event_at = event.audio_offset_ms, now
        elif event.type in (SpeechEventType.END_OF_UTTERANCE, SpeechEventType.END_OF_SINGLE_UTTERANCE):
            utt.eou_offset_ms, utt.eou_at = event.audio_offset_ms, now
    elif update.result is not None:
        result = update.result
        utt = run.utterances.setdefault(result.utterance_index, Utterance(result.utterance_index))
        if result.is_final:
            utt.final_at, utt.final_text = now, result.transcript
        else:
            utt.partials.append((now, result.transcript))


async def run_stream(
    target: str,
    run: StreamRun,
    config: RecognitionConfig,
    clips: list[Clip],
    start_at: float,
    stop_at: float,
    give_up_at: float,
    chunk_ms: int,
) -> None:
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    # Own channel per stream (local subchannel pool): N independent callers, not one multiplexed one.
    options = [("grpc.use_local_subchannel_pool", 1)]
    try:
        async with asyncio.timeout(max(0.1, give_up_at - time.monotonic())):
            async with AsyncClient(target, channel_options=options) as client:
                source = paced_audio(run, clips, time.monotonic(), stop_at, chunk_ms)
                async with contextlib.aclosing(client.stream(source, config)) as updates:
                    async for update in updates:
                        record(run, update, time.monotonic())
        run.ended_normally = True
    except TimeoutError:
        run.error = "cancelled: results still missing at the end of the drain time"
    except VoxwireError as exc:
        run.error = f"{type(exc).__name__}: {exc}"


def churn_counts(partials: list[str], final: str) -> tuple[int, int]:
    """(words shown by partials, shown words later changed or removed)."""
    shown = changed = 0
    display: dict[int, str] = {}
    for k, text in enumerate([*partials, final]):
        words = normalize(text)
        for j in range(max(len(display), len(words))):
            old, new = display.get(j), words[j] if j < len(words) else None
            if old is not None and old != new:
                changed += 1
            if new is not None and new != old and k < len(partials):
                shown += 1
        display = dict(enumerate(words))
    return shown, changed


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarize(
    runs: list[StreamRun], args: argparse.Namespace, base_texts: dict[str, str], base_median_s: float
) -> dict[str, Any]:
    first_partial, first_after_event, final, eou_lag = [], [], [], []
    shown = changed = utterances = unfinished = kept_up = 0
    per_stream = []
    for run in runs:
        ok = run.ended_normally and run.max_lateness_s <= args.keep_up_lag_s
        for utt in sorted(run.utterances.values(), key=lambda u: u.index):
            utterances += 1
            if utt.eou_offset_ms is None or (utt.final_at is None and not run.ended_normally):
                unfinished += 1
                ok = False
                continue
            endpoint_at = run.sent_at(utt.eou_offset_ms + args.silence_ms, start=False)
            assert endpoint_at is not None and utt.eou_at is not None
            eou_lag.append(utt.eou_at - endpoint_at)
            ok = ok and eou_lag[-1] <= args.keep_up_lag_s
            if utt.final_at is not None:
                final.append(utt.final_at - endpoint_at)
                ok = ok and final[-1] <= args.keep_up_final_s
            if utt.partials and utt.speech_offset_ms is not None:
                spoken_at = run.sent_at(utt.speech_offset_ms, start=True)
                assert spoken_at is not None
                first_partial.append(utt.partials[0][0] - spoken_at)
                if utt.speech_event_at is not None:
                    first_after_event.append(utt.partials[0][0] - utt.speech_event_at)
            s, c = churn_counts([text for _, text in utt.partials], utt.final_text or "")
            shown, changed = shown + s, changed + c
        kept_up += ok
        per_stream.append({"kept_up": ok, "error": run.error, "max_lateness_s": run.max_lateness_s})
    pairs, base_pairs = [], []
    for run, detail in zip(runs, per_stream, strict=True):
        finals = [u.final_text or "" for u in sorted(run.utterances.values(), key=lambda u: u.index)]
        pairs.append((" ".join(run.references), " ".join(finals)))
        base_pairs.append((" ".join(run.references), " ".join(base_texts[c] for c in run.clip_ids)))
        detail.update(clips=run.clip_ids, finals=finals, wer=wer(pairs[-1:]))

    def ms(values: list[float], q: float) -> float | None:
        p = percentile(values, q)
        return None if p is None else p * 1000

    def ratio(values: list[float], q: float) -> float | None:
        p = percentile(values, q)
        return None if p is None else p / base_median_s

    return {
        "utterances": utterances,
        "unfinished": unfinished,
        "utterances_with_partials": len(first_partial),
        "first_partial_ms": {"p50": ms(first_partial, 0.5), "p95": ms(first_partial, 0.95)},
        "first_partial_after_event_ms": {
            "p50": ms(first_after_event, 0.5),
            "p95": ms(first_after_event, 0.95),
        },
        "final_after_endpoint_ms": {q: ms(final, v) for q, v in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))},
        "eou_lag_ms": {"p50": ms(eou_lag, 0.5), "p95": ms(eou_lag, 0.95)},
        "ratio_vs_baseline": {
            "first_partial_p50": ratio(first_partial, 0.5),
            "final_p50": ratio(final, 0.5),
            "final_p95": ratio(final, 0.95),
        },
        "churn": changed / shown if shown else None,
        "words_shown_in_partials": shown,
        "kept_up": kept_up,
        "wer": wer(pairs),
        "baseline_wer_same_clips": wer(base_pairs),
        "max_client_lateness_s": max((r.max_lateness_s for r in runs), default=0.0),
        "per_stream": per_stream,
        "raw_s": {"final_after_endpoint": final, "first_partial": first_partial, "eou_lag": eou_lag},
    }


async def run_level(
    target: str,
    pid: int,
    pool: list[Clip],
    streams: int,
    interim: bool,
    args: argparse.Namespace,
    base: tuple[dict[str, str], float],
) -> dict[str, Any]:
    rng = random.Random(args.seed * 100_003 + streams * 2 + int(interim))
    config = RecognitionConfig(
        encoding=AudioEncoding.LINEAR16, sample_rate_hz=RATE_HZ, channels=1, interim_results=interim
    )
    runs = [StreamRun(i) for i in range(streams)]
    plans = [plan(pool, rng) for _ in runs]
    staggers = [rng.uniform(0.0, STAGGER_S) for _ in runs]
    cpu_before, started = cpu_seconds(pid), time.monotonic()
    stop_at = started + args.seconds_per_level
    give_up_at = stop_at + args.drain_s
    async with asyncio.TaskGroup() as tg:
        for run, clips, stagger in zip(runs, plans, staggers, strict=True):
            tg.create_task(
                run_stream(target, run, config, clips, started + stagger, stop_at, give_up_at, args.chunk_ms)
            )
    wall_s, cpu_s = time.monotonic() - started, cpu_seconds(pid) - cpu_before
    audio_s = sum(r.audio_s for r in runs)
    summary = summarize(runs, args, *base)
    summary.update(
        mode="interim" if interim else "finals only",
        streams=streams,
        wall_s=wall_s,
        audio_s=audio_s,
        server_cpu_s=cpu_s,
        server_rtf=cpu_s / audio_s if audio_s else None,
        server_cpu_pct=100 * cpu_s / wall_s,
    )
    await wait_idle(pid)
    return summary


async def run_levels(
    target: str,
    pid: int,
    pool: list[Clip],
    levels: list[tuple[int, bool]],
    args: argparse.Namespace,
    base: tuple[dict[str, str], float],
    t_start: float,
) -> tuple[list[dict[str, Any]], list[str]]:
    async with AsyncClient(target, timeout_s=5) as client:
        for _ in range(int(START_TIMEOUT_S)):
            with contextlib.suppress(VoxwireError):
                if await client.health() == "SERVING":
                    break
            await asyncio.sleep(1.0)
        else:
            raise SystemExit("voxwire-server never reported SERVING")
        # Warm-up (not measured): one clip, unpaced.
        config = RecognitionConfig(encoding=AudioEncoding.LINEAR16, sample_rate_hz=RATE_HZ, channels=1)
        async for _ in client.stream(pool[0].pcm + bytes(2 * RATE_HZ), config):
            pass
    results, skipped = [], []
    for streams, interim in levels:
        name = f"{streams} streams, {'interim' if interim else 'finals only'}"
        if time.monotonic() - t_start + args.seconds_per_level + args.drain_s > args.max_total_s:
            skipped.append(name)
            continue
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results.append(await run_level(target, pid, pool, streams, interim, args, base))
    return results, skipped


# ---------------------------------------------------------------- output


def fmt(value: float | None, spec: str = ".0f", unit: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{unit}"


def print_table(rows: list[dict[str, Any]], base: dict[str, Any]) -> None:
    print(
        "| mode | streams | utterances (unfinished) | first partial p50 / p95 ms "
        "| final after endpoint p50 / p95 / p99 ms | EOU lag p95 ms "
        "| vs baseline: first partial p50, final p50, final p95 | churn | server RTF | server CPU "
        "| kept up | WER | baseline WER, same clips |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        fp, fa, lag, ra = (
            r["first_partial_ms"],
            r["final_after_endpoint_ms"],
            r["eou_lag_ms"],
            r["ratio_vs_baseline"],
        )
        ratios = ", ".join(fmt(ra[k], ".2f", "×") for k in ("first_partial_p50", "final_p50", "final_p95"))
        churn = fmt(None if r["churn"] is None else 100 * r["churn"], ".1f", " %")
        print(
            f"| {r['mode']} | {r['streams']} | {r['utterances']} ({r['unfinished']}) "
            f"| {fmt(fp['p50'])} / {fmt(fp['p95'])} | {fmt(fa['p50'])} / {fmt(fa['p95'])} / {fmt(fa['p99'])} "
            f"| {fmt(lag['p95'])} | {ratios} | {churn} | {fmt(r['server_rtf'], '.3f')} "
            f"| {fmt(r['server_cpu_pct'], '.0f', ' %')} | {r['kept_up']}/{r['streams']} "
            f"| {100 * r['wer']:.1f} % | {100 * r['baseline_wer_same_clips']:.1f} % |"
        )
    print(
        f"\nBaseline, plain faster-whisper offline per clip on {base['cpu_threads']} threads "
        f"({base['clips']} clips, {base['audio_s']:.0f} s): p50 {base['p50_ms']:.0f} ms, "
        f"p95 {base['p95_ms']:.0f} ms, WER {100 * base['wer']:.1f} %; on 1 thread: p50 "
        f"{base['one_thread_p50_ms']:.0f} ms."
    )


def plot(rows: list[dict[str, Any]], base_p50_ms: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode, marker in (("interim", "o"), ("finals only", "s")):
        picked = [r for r in rows if r["mode"] == mode and r["final_after_endpoint_ms"]["p50"] is not None]
        if not picked:
            continue
        xs = [r["streams"] for r in picked]
        for q, style in (("p50", "-"), ("p95", "--")):
            ys = [r["final_after_endpoint_ms"][q] for r in picked]
            ax.plot(xs, ys, style, marker=marker, label=f"{mode}: {q}")
    ax.axhline(base_p50_ms, color="grey", linestyle=":", label="faster-whisper offline, per clip p50")
    ax.set_xscale("log", base=2)
    counts = sorted({r["streams"] for r in rows})
    ax.set_xticks(counts, [str(n) for n in counts])
    ax.minorticks_off()
    ax.set_xlabel("concurrent real-time streams")
    ax.set_ylabel("final after endpoint (ms)")
    ax.set_title("voxwire: final latency under load (loopback)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("stream counts must be positive")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int_list, default=[1, 4, 8, 16], help="comma-separated counts")
    parser.add_argument("--interim", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--finals-only-streams", type=int_list, default=[], help="also run these counts with interim off"
    )
    parser.add_argument("--seconds-per-level", type=float, default=30.0, help="wall time of audio per level")
    parser.add_argument("--drain-s", type=float, default=30.0, help="wait for last results, then cancel")
    parser.add_argument("--max-total-s", type=float, default=900.0, help="skip levels that would pass this")
    parser.add_argument("--clips", type=int, default=100, help="size of the clip pool (<= 10 s clips)")
    parser.add_argument("--chunk-ms", type=int, default=100)
    parser.add_argument("--silence-ms", type=int, default=600, help="server endpointer silence")
    parser.add_argument("--partial-interval-ms", type=int, default=500, help="server interim interval")
    parser.add_argument("--keep-up-final-s", type=float, default=2.0)
    parser.add_argument("--keep-up-lag-s", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: streams 1,2, 10 s per level, 12 clips"
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "asr_load.json"))
    parser.add_argument("--plot", default=str(ROOT / "benchmarks" / "results" / "asr_load.png"))
    args = parser.parse_args()
    if args.quick:
        args.streams, args.seconds_per_level, args.drain_s, args.clips = [1, 2], 10.0, 20.0, 12
    if not (DATA_DIR / "manifest.jsonl").is_file():
        raise SystemExit(f"speech-dev data not found at {DATA_DIR} (set VOXWIRE_DATA_DIR)")
    t_start = time.monotonic()
    pool = load_pool(args.clips)
    if not pool:
        raise SystemExit("no 16 kHz mono clips of <= 10 s in the speech-dev manifest")
    levels = [(n, bool(args.interim)) for n in args.streams] + [(n, False) for n in args.finals_only_streams]

    cores = usable_cores()
    print(f"baseline: faster-whisper on {len(pool)} clips, {cores} threads ...", file=sys.stderr, flush=True)
    base_times, base_texts = baseline(pool, cores)
    one_times = baseline(pool, 1)[0] if cores > 1 else base_times
    times = list(base_times.values())
    base_median_s = statistics.median(times)
    base = {
        "clips": len(pool),
        "audio_s": sum(c.duration_s for c in pool),
        "cpu_threads": cores,
        "p50_ms": base_median_s * 1000,
        "p95_ms": (percentile(times, 0.95) or 0.0) * 1000,
        "wer": wer([(c.reference, base_texts[c.id]) for c in pool]),
        "per_clip_s": base_times,
        "one_thread_p50_ms": statistics.median(one_times.values()) * 1000,
        "one_thread_per_clip_s": one_times,
    }
    proc, target = start_server(
        "--silence-ms", str(args.silence_ms), "--partial-interval-ms", str(args.partial_interval_ms)
    )
    try:
        rows, skipped = asyncio.run(
            run_levels(target, proc.pid, pool, levels, args, (base_texts, base_median_s), t_start)
        )
    finally:
        stop_server(proc)

    print(
        f"\n{len(pool)} speech-dev clips (<= 10 s) + {GAP_S:.0f} s silence each, {args.chunk_ms} ms chunks "
        f"in real time, {args.seconds_per_level:.0f} s per level, server silence {args.silence_ms} ms, "
        f"partials every {args.partial_interval_ms} ms; machine: {os.cpu_count()} vCPU\n"
    )
    print_table(rows, base)
    if skipped:
        print(f"\nskipped (over --max-total-s {args.max_total_s:.0f}): {', '.join(skipped)}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "plot")}
    out.write_text(
        json.dumps(
            {
                "settings": settings,
                "cpu_count": os.cpu_count(),
                "baseline": base,
                "levels": rows,
                "skipped": skipped,
            },
            indent=2,
        )
    )
    if rows:
        plot(rows, base["p50_ms"], Path(args.plot))
    print(f"\nwrote {out}" + (f" and {args.plot}" if rows else ""))


if __name__ == "__main__":
    main()
