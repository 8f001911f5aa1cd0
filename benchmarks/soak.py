"""Soak and overload: thousands of short calls for memory growth, then 2× and 4× the streams that keep up.

Starts `voxwire-server` on a free loopback port (with `--metrics-listen` on another) and drives it
through the public asyncio client.

Soak: `--streams` short `StreamingRecognize` calls (2,000 by default) run by `--parallel` workers
(4), each worker one call after another on its own channel (reopened every `--reconnect-every`
calls, so connections come and go too). Every stream sends a short real clip (speech-dev clips of
<= 4 s when ../shared/data/speech-dev exists, else samples/jfk.flac) as LINEAR16 in 20 ms chunks,
unpaced, then end-of-audio, and reads every update up to the final; every other stream asks for
interim results. Every `--recognize-every`-th call is followed by a `Recognize` of the same clip and
every `--synthesize-every`-th by a `SynthesizeStream` of a short text (half of them bypassing the
cache, so the model runs; the others hit it), since a leak could sit in any of them. The server's
RSS (VmRSS of /proc/PID/status) is sampled every `--sample-every` streams. Growth: a least-squares
line through the samples taken after `--warmup-streams`, as MiB per 1,000 streams and as % of the
RSS at the end of the warm-up. Errors are counted by status code.

Overload: real-time streams (100 ms chunks, paced like a microphone; speech-dev clips of <= 10 s,
each followed by 1 s of silence so the endpointer fires; interim results on) for `--level-s` each,
starts staggered over the first second. Capacity is the largest count in 1, 2, 4, ... (up to
`--max-capacity`) whose final-after-endpoint p95 stays <= `--capacity-p95-s` (1 s) with nothing
refused; or `--capacity N`. Then 2× and 4× that many streams: accepted streams' final latency
p50 / p95 (ratio to the 1× level of the same run), streams refused (RESOURCE_EXHAUSTED), the time
from opening a refused stream to its refusal (p50 / p95) and the retry delay the refusal carried
(google.rpc.RetryInfo, read by the client as `retry_after_s`). The final-after-endpoint time is as
in asr_load.py: the final's arrival minus the time the client sent the chunk holding
END_OF_UTTERANCE.audio_offset_ms + silence_ms. Whatever the server does is reported: it may accept
every stream.

Prints Markdown tables and writes JSON (--out).

    .venv/bin/python benchmarks/soak.py [--streams 2000] [--parallel 4] [--capacity N] [--no-overload]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import random
import socket
import statistics
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.server_process import START_TIMEOUT_S, start_server, stop_server  # noqa: E402
from tests.helpers import DATA_DIR  # noqa: E402
from voxwire import (  # noqa: E402
    AsyncClient,
    AudioEncoding,
    CachePolicy,
    RecognitionConfig,
    ResourceExhaustedError,
    VoxwireError,
    read_audio_file,
)
from voxwire.audio import chunk_bytes_for, iter_chunks  # noqa: E402
from voxwire.types import SpeechEventType  # noqa: E402

RATE_HZ = 16_000
SILENCE_MS = 600  # the server's endpointer silence (passed to it)
GAP_S = 1.0  # silence after each clip of a paced stream: more than SILENCE_MS
CALL_TIMEOUT_S = 60.0
TEXTS = (
    "Turning on the kitchen lights.",
    "Your timer is set for five minutes.",
    "It is sunny and twenty two degrees.",
    "Playing your morning playlist.",
    "I added milk to your shopping list.",
    "The next train leaves at ten past nine.",
)


@dataclass(frozen=True, slots=True)
class Clip:
    id: str
    pcm: bytes

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / (2 * RATE_HZ)


def load_clips(max_s: float) -> list[Clip]:
    """16 kHz mono speech-dev clips up to max_s, or samples/jfk.flac decoded when there is no data."""
    manifest = DATA_DIR / "manifest.jsonl"
    clips = []
    if manifest.is_file():
        for line in manifest.read_text().splitlines():
            item = json.loads(line)
            if float(item["duration_s"]) > max_s:
                continue
            audio = read_audio_file(DATA_DIR / item["audio"])
            if audio.encoding is AudioEncoding.LINEAR16 and (audio.sample_rate_hz, audio.channels) == (
                RATE_HZ,
                1,
            ):
                clips.append(Clip(item["id"], audio.data))
    if clips:
        return clips
    import av

    pcm = bytearray()
    with av.open(str(ROOT / "samples" / "jfk.flac")) as container:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE_HZ)
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                pcm += bytes(out.planes[0])[: out.samples * 2]
    return [Clip("jfk", bytes(pcm))]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def error_code(exc: BaseException) -> str:
    if isinstance(exc, VoxwireError):
        return exc.code
    if isinstance(exc, TimeoutError):
        return "CLIENT_TIMEOUT"
    return type(exc).__name__


# ---------------------------------------------------------------- soak


@dataclass(slots=True)
class Soak:
    total: int
    started: int = 0
    streams_done: int = 0
    calls: Counter[str] = field(default_factory=Counter)
    errors: Counter[tuple[str, str]] = field(default_factory=Counter)
    retried: Counter[str] = field(default_factory=Counter)  # refusals waited out and retried
    finals: int = 0
    samples: list[tuple[int, float, int]] = field(default_factory=list)  # (streams, t, RSS KiB)


async def soak_worker(target: str, pid: int, clips: list[Clip], soak: Soak, args: argparse.Namespace) -> None:
    options = [("grpc.use_local_subchannel_pool", 1)]
    client: AsyncClient | None = None
    done_here = 0
    try:
        while soak.started < soak.total:
            i = soak.started
            soak.started += 1
            if client is None or done_here % args.reconnect_every == 0:
                if client is not None:
                    await client.aclose()
                client = AsyncClient(target, timeout_s=CALL_TIMEOUT_S, channel_options=options)
            clip = clips[i % len(clips)]
            config = RecognitionConfig(
                encoding=AudioEncoding.LINEAR16,
                sample_rate_hz=RATE_HZ,
                channels=1,
                interim_results=i % 2 == 1,
            )
            c = client
            await soak_call(soak, "StreamingRecognize", partial(soak_stream, c, clip, config, soak), args)
            if i % args.recognize_every == args.recognize_every - 1:
                await soak_call(soak, "Recognize", partial(c.recognize, clip.pcm, config), args)
            if i % args.synthesize_every == args.synthesize_every // 2:
                # By turns: streamed or whole, cache used (hits once warm) or bypassed (the model runs).
                turn = i // args.synthesize_every
                text = TEXTS[i % len(TEXTS)]
                policy = CachePolicy.BYPASS if turn % 2 else CachePolicy.USE
                if turn % 4 < 2:
                    await soak_call(soak, "SynthesizeStream", partial(soak_synthesis, c, text, policy), args)
                else:
                    await soak_call(soak, "Synthesize", partial(soak_whole, c, text, policy), args)
            done_here += 1
            soak.streams_done += 1
            if soak.streams_done % args.sample_every == 0:
                soak.samples.append((soak.streams_done, time.monotonic(), rss_kib(pid)))
                if soak.streams_done % (args.sample_every * 10) == 0:
                    print(
                        f"  {soak.streams_done} streams, RSS {soak.samples[-1][2] / 1024:.0f} MiB",
                        file=sys.stderr,
                    )
    finally:
        if client is not None:
            await client.aclose()


async def soak_call(
    soak: Soak, method: str, call: Callable[[], Awaitable[Any]], args: argparse.Namespace
) -> None:
    """One call; a refusal (RESOURCE_EXHAUSTED) is waited out as it asks and retried, as a client
    should, up to --max-retries times; any other error is counted by its code."""
    soak.calls[method] += 1
    for attempt in range(args.max_retries + 1):
        try:
            await call()
            return
        except ResourceExhaustedError as exc:
            if attempt == args.max_retries:
                soak.errors[(method, exc.code)] += 1
                return
            soak.retried[method] += 1
            await asyncio.sleep(exc.retry_after_s or 0.25)
        except (VoxwireError, TimeoutError) as exc:
            soak.errors[(method, error_code(exc))] += 1
            return


async def soak_whole(client: AsyncClient, text: str, policy: CachePolicy) -> None:
    await client.synthesize(text, encoding=AudioEncoding.LINEAR16, cache_policy=policy)


async def soak_stream(client: AsyncClient, clip: Clip, config: RecognitionConfig, soak: Soak) -> None:
    async with contextlib.aclosing(
        client.stream(clip.pcm, config, chunk_ms=20, timeout_s=CALL_TIMEOUT_S)
    ) as updates:
        async for update in updates:
            if update.result is not None and update.result.is_final:
                soak.finals += 1


async def soak_synthesis(client: AsyncClient, text: str, policy: CachePolicy) -> None:
    chunks = client.synthesize_stream(text, encoding=AudioEncoding.LINEAR16, cache_policy=policy)
    async with contextlib.aclosing(chunks) as stream:
        async for _ in stream:
            pass


def growth(samples: list[tuple[int, float, int]], warmup: int) -> dict[str, Any]:
    kept = [(n, kib) for n, _, kib in samples if n >= warmup]
    if len(kept) < 3:
        return {"samples_after_warmup": len(kept)}
    xs, ys = [float(n) for n, _ in kept], [kib / 1024 for _, kib in kept]
    fit = statistics.linear_regression(xs, ys)
    at_warmup = fit.intercept + fit.slope * xs[0]
    per_1000 = fit.slope * 1000
    # Less sensitive to a transient spike (a 30 s escalation window): the median RSS of the last
    # quarter of the samples against that of the first quarter.
    q = max(1, len(kept) // 4)
    first, last = kept[:q], kept[-q:]
    span = statistics.median(n for n, _ in last) - statistics.median(n for n, _ in first)
    rise = statistics.median(y for y in ys[-q:]) - statistics.median(y for y in ys[:q])
    return {
        "samples_after_warmup": len(kept),
        "rss_at_warmup_mib": ys[0],
        "rss_end_mib": ys[-1],
        "rss_min_max_after_warmup_mib": [min(ys), max(ys)],
        "fit_rss_at_warmup_mib": at_warmup,
        "growth_mib_per_1000_streams": per_1000,
        "growth_pct_per_1000_streams": 100 * per_1000 / at_warmup,
        "quartile_medians_growth_mib_per_1000_streams": 1000 * rise / span if span else None,
    }


async def run_soak(target: str, pid: int, clips: list[Clip], args: argparse.Namespace) -> dict[str, Any]:
    soak = Soak(args.streams)
    soak.samples.append((0, time.monotonic(), rss_kib(pid)))
    started = time.monotonic()
    async with asyncio.TaskGroup() as tg:
        for _ in range(args.parallel):
            tg.create_task(soak_worker(target, pid, clips, soak, args))
    wall_s = time.monotonic() - started
    if soak.streams_done % args.sample_every:
        soak.samples.append((soak.streams_done, time.monotonic(), rss_kib(pid)))
    return {
        "streams": soak.streams_done,
        "parallel": args.parallel,
        "calls": dict(soak.calls),
        "finals": soak.finals,
        "errors": {f"{m} {c}": n for (m, c), n in sorted(soak.errors.items())},
        "refused_and_retried": dict(soak.retried),
        "wall_s": wall_s,
        "streams_per_s": soak.streams_done / wall_s,
        "audio_s_streamed": sum(clips[i % len(clips)].duration_s for i in range(soak.streams_done)),
        "rss_start_mib": soak.samples[0][2] / 1024,
        "rss_samples": [{"streams": n, "t_s": t - started, "rss_kib": kib} for n, t, kib in soak.samples],
        **growth(soak.samples, args.warmup_streams),
    }


# ---------------------------------------------------------------- overload


@dataclass(slots=True)
class PacedRun:
    chunk_end_ms: list[float] = field(default_factory=list)
    chunk_sent_at: list[float] = field(default_factory=list)
    eou: dict[int, int] = field(default_factory=dict)  # utterance -> END_OF_UTTERANCE offset ms
    final_at: dict[int, float] = field(default_factory=dict)
    opened_at: float = 0.0
    first_update_at: float | None = None
    refused_after_s: float | None = None
    retry_after_s: float | None = None
    error: str = ""

    def sent_at(self, position_ms: float) -> float | None:
        if not self.chunk_end_ms:
            return None
        i = bisect.bisect_left(self.chunk_end_ms, position_ms)
        return self.chunk_sent_at[min(i, len(self.chunk_sent_at) - 1)]


async def paced(run: PacedRun, clips: list[Clip], stop_at: float) -> Any:
    chunk_bytes = chunk_bytes_for(RATE_HZ, 1, 100)
    gap = bytes(2 * int(GAP_S * RATE_HZ))
    t0, samples = time.monotonic(), 0
    for n, clip in enumerate(clips):
        if n > 0 and time.monotonic() + clip.duration_s + GAP_S > stop_at:
            return
        for chunk in iter_chunks(clip.pcm + gap, chunk_bytes):
            samples += len(chunk) // 2
            delay = t0 + samples / RATE_HZ - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            run.chunk_end_ms.append(samples * 1000 / RATE_HZ)
            run.chunk_sent_at.append(time.monotonic())
            yield chunk


async def paced_stream(
    target: str, run: PacedRun, clips: list[Clip], start_at: float, stop_at: float, drain_s: float
) -> None:
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    config = RecognitionConfig(
        encoding=AudioEncoding.LINEAR16, sample_rate_hz=RATE_HZ, channels=1, interim_results=True
    )
    run.opened_at = time.monotonic()
    try:
        async with asyncio.timeout(stop_at + drain_s - run.opened_at):
            async with AsyncClient(target, channel_options=[("grpc.use_local_subchannel_pool", 1)]) as client:
                updates = client.stream(paced(run, clips, stop_at), config)
                async with contextlib.aclosing(updates) as stream:
                    async for update in stream:
                        now = time.monotonic()
                        if run.first_update_at is None:
                            run.first_update_at = now
                        event = update.speech_event
                        if event is not None and event.type is SpeechEventType.END_OF_UTTERANCE:
                            run.eou[event.utterance_index] = event.audio_offset_ms
                        elif update.result is not None and update.result.is_final:
                            run.final_at[update.result.utterance_index] = now
    except ResourceExhaustedError as exc:
        run.refused_after_s = time.monotonic() - run.opened_at
        run.retry_after_s = exc.retry_after_s
        run.error = exc.code
    except (VoxwireError, TimeoutError) as exc:
        run.error = error_code(exc)


async def run_level(
    target: str, clips: list[Clip], streams: int, args: argparse.Namespace, rng: random.Random
) -> dict[str, Any]:
    runs = [PacedRun() for _ in range(streams)]
    started = time.monotonic()
    stop_at = started + args.level_s
    async with asyncio.TaskGroup() as tg:
        for run in runs:
            order = rng.sample(clips, len(clips))
            start_at = started + rng.uniform(0.0, 1.0)
            tg.create_task(paced_stream(target, run, order, start_at, stop_at, args.drain_s))
    finals, unfinished = [], 0
    for run in runs:
        if run.refused_after_s is not None:
            continue
        for index, offset_ms in run.eou.items():
            endpoint_at = run.sent_at(offset_ms + SILENCE_MS)
            if index in run.final_at and endpoint_at is not None:
                finals.append(run.final_at[index] - endpoint_at)
            else:
                unfinished += 1
    refused = [r for r in runs if r.refused_after_s is not None]
    refusal_s = [r.refused_after_s for r in refused if r.refused_after_s is not None]
    retry = [r.retry_after_s for r in refused if r.retry_after_s is not None]
    return {
        "streams": streams,
        "accepted": streams - len(refused),
        "refused": len(refused),
        "other_errors": dict(Counter(r.error for r in runs if r.error and r.refused_after_s is None)),
        "utterances": len(finals) + unfinished,
        "unfinished": unfinished,
        "final_p50_s": percentile(finals, 0.5),
        "final_p95_s": percentile(finals, 0.95),
        "refusal_p50_s": percentile(refusal_s, 0.5),
        "refusal_p95_s": percentile(refusal_s, 0.95),
        "retry_after_s": sorted(set(retry)),
        "refused_without_retry_info": len(refused) - len(retry),
        "raw_final_s": finals,
    }


async def wait_quiet(pid: int) -> None:
    """Lets the server finish a level's backlog before the next one."""
    path = Path(f"/proc/{pid}/stat")

    def cpu() -> float:
        f = path.read_text().rpartition(")")[2].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

    last = cpu()
    for _ in range(60):
        await asyncio.sleep(0.5)
        now = cpu()
        if now - last < 0.05:
            return
        last = now


def keeps_up(level: dict[str, Any], args: argparse.Namespace) -> bool:
    p95 = level["final_p95_s"]
    return (
        level["refused"] == 0 and not level["unfinished"] and p95 is not None and p95 <= args.capacity_p95_s
    )


async def run_overload(target: str, pid: int, clips: list[Clip], args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    search: list[dict[str, Any]] = []
    capacity = args.capacity
    if capacity is None:
        n = 1
        while n <= args.max_capacity:
            print(f"  capacity search: {n} real-time streams ...", file=sys.stderr, flush=True)
            level = await run_level(target, clips, n, args, rng)
            search.append(level)
            await wait_quiet(pid)
            if not keeps_up(level, args):
                break
            capacity = n
            n *= 2
        if capacity is None:
            return {"capacity": None, "search": search, "levels": []}
    levels = []
    for factor in (1, 2, 4):
        found = next((s for s in search if s["streams"] == capacity * factor), None)
        if found is None:
            print(f"  overload: {capacity * factor} real-time streams ...", file=sys.stderr, flush=True)
            found = await run_level(target, clips, capacity * factor, args, rng)
            await wait_quiet(pid)
        levels.append({"factor": factor, **found})
    return {
        "capacity": capacity,
        "capacity_from": "search" if args.capacity is None else "flag",
        "search": search,
        "levels": levels,
    }


# ---------------------------------------------------------------- output


def fmt(value: float | None, spec: str = ".0f", scale: float = 1.0) -> str:
    return "–" if value is None else f"{value * scale:{spec}}"


def print_soak(r: dict[str, Any], args: argparse.Namespace) -> None:
    calls = ", ".join(f"{n} {m}" for m, n in r["calls"].items())
    errors = ", ".join(f"{k}: {n}" for k, n in r["errors"].items()) or "none"
    retried = ", ".join(f"{m}: {n}" for m, n in r["refused_and_retried"].items()) or "none"
    print(
        "| streams | parallel | calls | finals | wall s | streams/s "
        "| RSS start → after warm-up (fit) → end MiB "
        "| growth per 1,000 streams | errors (after retries) | refusals retried |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {r['streams']} | {r['parallel']} | {calls} | {r['finals']} | {r['wall_s']:.0f} "
        f"| {r['streams_per_s']:.1f} | {r['rss_start_mib']:.0f} → {fmt(r.get('fit_rss_at_warmup_mib'))} → "
        f"{fmt(r.get('rss_end_mib'))} | {fmt(r.get('growth_mib_per_1000_streams'), '+.1f')} MiB "
        f"({fmt(r.get('growth_pct_per_1000_streams'), '+.2f')} %) | {errors} | {retried} |"
    )
    low, high = r.get("rss_min_max_after_warmup_mib", [None, None])
    print(
        f"\nGrowth: least-squares line through {r.get('samples_after_warmup', 0)} RSS samples after "
        f"the first {args.warmup_streams} streams (one every {args.sample_every}); RSS after the warm-up "
        f"ranged {fmt(low)}–{fmt(high)} MiB; median of the last quarter of samples against the first: "
        f"{fmt(r.get('quartile_medians_growth_mib_per_1000_streams'), '+.1f')} MiB per 1,000 streams."
    )


def print_overload(o: dict[str, Any]) -> None:
    if o["capacity"] is None:
        print("\nNo level kept up (final p95 <= the limit, nothing refused); no overload run.")
        return
    base = o["levels"][0]
    print(f"\nCapacity ({o['capacity_from']}): {o['capacity']} real-time streams.\n")
    print(
        "| streams | × capacity | accepted | refused | final p50 / p95 ms | vs 1×: p50, p95 "
        "| unfinished utterances | time to refusal p50 / p95 ms | retry delay s | other errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for lv in o["levels"]:
        ratios = ", ".join(
            "–" if lv[k] is None or not base[k] else f"{lv[k] / base[k]:.2f}×"
            for k in ("final_p50_s", "final_p95_s")
        )
        delays = lv["retry_after_s"]
        retry = f"{min(delays):.1f}–{max(delays):.1f}" if delays else "–"
        if lv["refused_without_retry_info"]:
            retry += f" (none on {lv['refused_without_retry_info']})"
        print(
            f"| {lv['streams']} | {lv['factor']}× | {lv['accepted']} | {lv['refused']} "
            f"| {fmt(lv['final_p50_s'], '.0f', 1000)} / {fmt(lv['final_p95_s'], '.0f', 1000)} | {ratios} "
            f"| {lv['unfinished']} of {lv['utterances']} "
            f"| {fmt(lv['refusal_p50_s'], '.0f', 1000)} / {fmt(lv['refusal_p95_s'], '.0f', 1000)} | {retry} "
            f"| {lv['other_errors'] or '–'} |"
        )


def scrape(port: int) -> dict[str, float]:
    """The server's own counters at the end: the voxwire_* samples without buckets."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith(("voxwire_", "process_resident")) and "_bucket{" not in line:
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


async def wait_serving(target: str) -> None:
    async with AsyncClient(target, timeout_s=5) as client:
        for _ in range(int(START_TIMEOUT_S)):
            with contextlib.suppress(VoxwireError):
                if await client.health() == "SERVING":
                    return
            await asyncio.sleep(1.0)
    raise SystemExit("voxwire-server never reported SERVING")


async def run_all(target: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    await wait_serving(target)
    out: dict[str, Any] = {}
    if args.streams:
        short = load_clips(4.0)
        print(f"soak: {args.streams} streams, {args.parallel} in parallel ...", file=sys.stderr, flush=True)
        out["soak"] = await run_soak(target, pid, short, args)
        out["soak"]["clips"] = len(short)
    if args.overload:
        out["overload"] = await run_overload(target, pid, load_clips(10.0), args)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=2000, help="soak streams (0: no soak)")
    parser.add_argument("--parallel", type=int, default=4, help="soak workers, each one call at a time")
    parser.add_argument("--recognize-every", type=int, default=5)
    parser.add_argument("--synthesize-every", type=int, default=5)
    parser.add_argument("--reconnect-every", type=int, default=50, help="a worker's calls per channel")
    parser.add_argument("--sample-every", type=int, default=25, help="streams between RSS samples")
    parser.add_argument("--warmup-streams", type=int, default=300)
    parser.add_argument(
        "--max-retries", type=int, default=5, help="a refused soak call is retried this often"
    )
    parser.add_argument("--overload", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--capacity", type=int, default=None, help="real-time streams that keep up (skips the search)"
    )
    parser.add_argument("--max-capacity", type=int, default=64)
    parser.add_argument("--capacity-p95-s", type=float, default=1.0)
    parser.add_argument("--level-s", type=float, default=20.0, help="audio seconds per overload level")
    parser.add_argument("--drain-s", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--server-arg", action="append", default=[], help="extra server flag (repeatable)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "soak.json"))
    args = parser.parse_args()
    if args.parallel < 1 or args.sample_every < 1 or args.recognize_every < 1 or args.synthesize_every < 1:
        raise SystemExit("--parallel, --sample-every, --recognize-every and --synthesize-every must be >= 1")
    metrics_port = free_port()
    proc, target = start_server(
        "--silence-ms", str(SILENCE_MS), "--metrics-listen", f"127.0.0.1:{metrics_port}", *args.server_arg
    )
    try:
        results = asyncio.run(run_all(target, proc.pid, args))
        results["server_metrics"] = scrape(metrics_port)
    finally:
        stop_server(proc)
    print(
        f"\nmachine: {os.cpu_count()} vCPU; server flags: --silence-ms {SILENCE_MS} "
        f"{' '.join(args.server_arg)}\n"
    )
    if "soak" in results:
        print_soak(results["soak"], args)
    if "overload" in results:
        print_overload(results["overload"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    out.write_text(json.dumps({"settings": settings, "cpu_count": os.cpu_count(), **results}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
