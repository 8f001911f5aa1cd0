"""Synthesis under load: full syntheses, template stitching and phrase-cache hits through the public client.

Starts `voxwire-server` on a free loopback port with its in-process cache (`--cache memory`). The
workload is the 40 sentences of tests/tts_eval.TEMPLATES (20 assistant templates x 2 entity sets).
Before the levels, the templates are warmed up (Warmup, global tier: their prefixes) and the 40 filled
sentences are warmed up as phrases (global tier: whole replies), in the output format of the run
(`--encoding`, native 24 kHz). Then, for each concurrency level C (`--concurrency 1,4,16`), the three
modes run one after the other on one AsyncClient (one channel for the level), each with the same
`--requests-per-level` requests (a seeded shuffle of the 40 sentences, repeated as needed), kept C at
a time in flight by C workers (a worker sends its next request when the previous one ended):

  * full: the sentence as plain text with cache_policy BYPASS: a full synthesis, sentence by
    sentence, every time (the baseline the other modes are divided by);
  * stitched: the template and its entities; the cached prefix audio streams at once, the entity
    part is synthesized and spliced on. Every request has its own user id, so no personal entry of an
    earlier request can answer it;
  * cached: the sentence as plain text with cache_policy USE: a phrase-cache hit (global tier).

Definitions (wall-clock times taken in this client process, per SynthesizeStream call):
  * TTFA (time to first audio): arrival of the call's first chunk minus the moment the call started;
  * total: arrival of the last chunk minus the start; audio: the sum of the chunks' audio_duration_ms;
  * RTF: total / audio seconds of each request, median over the requests (< 1: the reply is ready
    faster than it plays). Under concurrency it includes the time a request waits for the server's
    single synthesis thread;
  * throughput: audio seconds received in the mode's run at that level per wall second of that run
    (the run includes its own ramp-down: the last requests run with fewer than C in flight);
  * chunk statuses: share of the chunks that carried each SynthesisCacheStatus (NONE: no cache
    consulted, as with BYPASS; MISS; HIT; STITCHED);
  * server lookups: hits / misses of each synthesis cache tier (GetStats) during the mode's run;
  * ratios, at the same level: stitched TTFA p50 / full TTFA p50 and cached TTFA p50 / full TTFA p50.

Quality (unless --no-quality), from tests/tts_eval: stitched vs full-sentence WER of the 40 sentences
through the server's own recognizer (evaluate_wer: templates warmed up at 16 kHz LINEAR16, a stitched
reply and a BYPASS full synthesis of each sentence), and, after the server has stopped, the pitch
steps (Hz) at the stitched joints against those at the word boundaries of full syntheses, in process
(evaluate_pitch on a HibariSynthesizer).

`--max-total-s` bounds the load part: a mode that would start past it is skipped, and a running mode
starts no new request past it; the quality section is skipped when the load part ran past it.

Prints a Markdown table (one row per mode x concurrency) and the quality lines, writes JSON (--out).

    .venv/bin/python benchmarks/tts_load.py [--concurrency 1,4,16] [--requests-per-level 120] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.server_process import START_TIMEOUT_S, start_server, stop_server  # noqa: E402
from tests.tts_eval import TEMPLATES, evaluate_pitch, evaluate_wer  # noqa: E402
from voxwire import (  # noqa: E402
    AsyncClient,
    AudioEncoding,
    CachePolicy,
    Client,
    ServerStats,
    VoxwireError,
)

MODES = ("full", "stitched", "cached")


@dataclass(frozen=True, slots=True)
class Sentence:
    index: int
    template: str
    entities: dict[str, str]
    text: str


@dataclass(slots=True)
class Request:
    sentence: int
    user_id: str
    ttfa_s: float | None = None
    total_s: float | None = None
    audio_ms: int = 0
    statuses: list[str] = field(default_factory=list)
    error: str = ""


def sentences() -> list[Sentence]:
    out = []
    for template, entity_sets in TEMPLATES:
        for entities in entity_sets:
            out.append(Sentence(len(out), template, entities, template.format(**entities)))
    return out


# ---------------------------------------------------------------- server


async def wait_serving(client: AsyncClient) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(VoxwireError):
            if await client.health(timeout_s=5) == "SERVING":
                return
        await asyncio.sleep(1.0)
    raise SystemExit("voxwire-server never reported SERVING")


def tier_counts(stats: ServerStats) -> dict[str, tuple[int, int]]:
    return {t.tier: (t.hits, t.misses) for t in stats.tiers if t.tier.startswith("tts.")}


def lookup_deltas(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]
) -> dict[str, dict[str, int]]:
    out = {}
    for tier, (hits, misses) in sorted(after.items()):
        old_hits, old_misses = before.get(tier, (0, 0))
        if (hits - old_hits) or (misses - old_misses):
            out[tier] = {"hits": hits - old_hits, "misses": misses - old_misses}
    return out


# ---------------------------------------------------------------- one mode at one level


def request_args(mode: str, sentence: Sentence, user_id: str, audio_format: dict[str, Any]) -> dict[str, Any]:
    if mode == "stitched":
        return {
            "template": sentence.template,
            "entities": sentence.entities,
            "user_id": user_id,
            **audio_format,
        }
    policy = CachePolicy.BYPASS if mode == "full" else CachePolicy.USE
    return {"text": sentence.text, "cache_policy": policy, "user_id": user_id, **audio_format}


async def one_request(
    client: AsyncClient, mode: str, sentence: Sentence, user_id: str, args: argparse.Namespace
) -> Request:
    audio_format = {"encoding": AudioEncoding(args.encoding), "sample_rate_hz": args.sample_rate_hz}
    request = Request(sentence.index, user_id)
    started = time.perf_counter()
    try:
        stream = client.synthesize_stream(
            **request_args(mode, sentence, user_id, audio_format), timeout_s=args.request_timeout_s
        )
        async with contextlib.aclosing(stream) as chunks:
            async for chunk in chunks:
                if request.ttfa_s is None:
                    request.ttfa_s = time.perf_counter() - started
                request.audio_ms += chunk.audio_duration_ms
                request.statuses.append(chunk.cache_status.value)
        request.total_s = time.perf_counter() - started
    except VoxwireError as exc:
        request.error = f"{type(exc).__name__}: {exc}"
    return request


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run_mode(
    client: AsyncClient,
    mode: str,
    concurrency: int,
    plan: list[Sentence],
    args: argparse.Namespace,
    stop_at: float,
) -> dict[str, Any]:
    jobs = iter(enumerate(plan))
    done: list[Request] = []

    async def worker() -> None:
        for n, sentence in jobs:  # one iterator shared by the workers: each job is taken once
            if time.monotonic() > stop_at:
                return
            user_id = f"tts-load-{mode}-c{concurrency}-r{n}"
            done.append(await one_request(client, mode, sentence, user_id, args))

    before = tier_counts(await client.stats())
    started = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(worker())
    wall_s = time.perf_counter() - started
    after = tier_counts(await client.stats())

    ok = [r for r in done if not r.error and r.ttfa_s is not None and r.total_s is not None]
    ttfa = [r.ttfa_s for r in ok if r.ttfa_s is not None]
    rtf = [r.total_s / (r.audio_ms / 1000) for r in ok if r.total_s is not None and r.audio_ms > 0]
    total = [r.total_s for r in ok if r.total_s is not None]
    audio_s = sum(r.audio_ms for r in ok) / 1000
    statuses = Counter(s for r in done for s in r.statuses)
    chunks = sum(statuses.values())

    def ms(values: list[float], q: float) -> float | None:
        p = percentile(values, q)
        return None if p is None else p * 1000

    return {
        "mode": mode,
        "concurrency": concurrency,
        "planned": len(plan),
        "requests": len(done),
        "errors": len(done) - len(ok),
        "error_samples": sorted({r.error for r in done if r.error})[:5],
        "ttfa_ms": {"p50": ms(ttfa, 0.5), "p95": ms(ttfa, 0.95)},
        "total_ms": {"p50": ms(total, 0.5), "p95": ms(total, 0.95)},
        "rtf_p50": statistics.median(rtf) if rtf else None,
        "audio_s": audio_s,
        "wall_s": wall_s,
        "throughput": audio_s / wall_s if wall_s > 0 else None,
        "chunks": chunks,
        "chunk_statuses": {s: n / chunks for s, n in statuses.most_common()} if chunks else {},
        "server_lookups": lookup_deltas(before, after),
        "raw": [asdict(r) for r in done],
    }


# ---------------------------------------------------------------- the run


async def run_load(
    target: str, all_sentences: list[Sentence], args: argparse.Namespace, t_start: float
) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    audio_format = {"encoding": AudioEncoding(args.encoding), "sample_rate_hz": args.sample_rate_hz}
    warm: dict[str, Any] = {}
    async with AsyncClient(target, timeout_s=args.warmup_timeout_s) as client:
        await wait_serving(client)
        # Not measured: the first synthesis over the channel.
        await client.synthesize(text="Warming up the voice.", cache_policy=CachePolicy.BYPASS, **audio_format)
        started = time.perf_counter()
        _, warm["templates_cached"] = await client.warmup(templates=[t for t, _ in TEMPLATES], **audio_format)
        warm["templates_s"] = time.perf_counter() - started
        started = time.perf_counter()
        warm["phrases_cached"], _ = await client.warmup(
            phrases=[s.text for s in all_sentences], **audio_format
        )
        warm["phrases_s"] = time.perf_counter() - started
    print(
        f"warmed up {warm['templates_cached']}/{len(TEMPLATES)} templates in {warm['templates_s']:.1f} s, "
        f"{warm['phrases_cached']}/{len(all_sentences)} phrases in {warm['phrases_s']:.1f} s",
        file=sys.stderr,
        flush=True,
    )
    rng = random.Random(args.seed)
    stop_at = t_start + args.max_total_s
    rows, skipped = [], []
    for concurrency in args.concurrency:
        order = list(all_sentences)
        rng.shuffle(order)
        plan = [order[i % len(order)] for i in range(args.requests_per_level)]
        async with AsyncClient(target, timeout_s=60) as client:  # one channel for the level
            for mode in MODES:
                name = f"{mode} at concurrency {concurrency}"
                if time.monotonic() > stop_at:
                    skipped.append(name)
                    continue
                print(f"running {name} ...", file=sys.stderr, flush=True)
                rows.append(await run_mode(client, mode, concurrency, plan, args, stop_at))
    return warm, rows, skipped


def ratios(rows: list[dict[str, Any]]) -> dict[int, dict[str, float | None]]:
    out: dict[int, dict[str, float | None]] = {}
    for concurrency in sorted({r["concurrency"] for r in rows}):
        p50 = {r["mode"]: r["ttfa_ms"]["p50"] for r in rows if r["concurrency"] == concurrency}
        base = p50.get("full")
        out[concurrency] = {
            f"{mode}_ttfa_p50_vs_full": (p50[mode] / base if base and p50.get(mode) is not None else None)
            for mode in ("stitched", "cached")
        }
    return out


def quality_with_server(target: str) -> dict[str, Any]:
    started = time.perf_counter()
    with Client(target, timeout_s=300) as client:
        result = evaluate_wer(client, user_id="tts-load-quality")
    counts = Counter(result.statuses)
    total = sum(counts.values())
    return {
        "stitched_wer": result.stitched_wer,
        "full_wer": result.full_wer,
        "sentences": sum(len(e) for _, e in TEMPLATES),
        "stitched_chunk_statuses": {s: n / total for s, n in counts.most_common()} if total else {},
        "wall_s": time.perf_counter() - started,
    }


def quality_in_process() -> dict[str, Any]:
    from voxwire_server.engines.tts import HibariSynthesizer

    started = time.perf_counter()
    synthesizer = HibariSynthesizer()
    try:
        synthesizer.warm_up()
        pitch = evaluate_pitch(synthesizer)
    finally:
        synthesizer.close()

    def median(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    return {
        "joint_median_hz": median(pitch.joint_jumps_hz),
        "natural_median_hz": median(pitch.natural_jumps_hz),
        "same_boundary_median_hz": median(pitch.same_boundary_jumps_hz),
        "joints_measured": len(pitch.joint_jumps_hz),
        "natural_boundaries_measured": len(pitch.natural_jumps_hz),
        "same_boundaries_measured": len(pitch.same_boundary_jumps_hz),
        "joints_failing_check": pitch.joints_failing_check,
        "joint_jumps_hz": pitch.joint_jumps_hz,
        "natural_jumps_hz": pitch.natural_jumps_hz,
        "same_boundary_jumps_hz": pitch.same_boundary_jumps_hz,
        "wall_s": time.perf_counter() - started,
    }


# ---------------------------------------------------------------- output


def fmt(value: float | None, spec: str = ".0f", unit: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{unit}"


def print_table(rows: list[dict[str, Any]], ratio: dict[int, dict[str, float | None]]) -> None:
    print(
        "| mode | concurrency | requests (errors) | TTFA p50 / p95 ms | TTFA p50 / full "
        "| total p50 / p95 ms | RTF p50 | throughput, audio s / s | chunk statuses "
        "| server lookups, hits / misses |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        vs = 1.0 if r["mode"] == "full" else ratio[r["concurrency"]].get(f"{r['mode']}_ttfa_p50_vs_full")
        statuses = ", ".join(f"{s} {100 * share:.0f} %" for s, share in r["chunk_statuses"].items())
        lookups = ", ".join(
            f"{tier.removeprefix('tts.')} {c['hits']} / {c['misses']}"
            for tier, c in r["server_lookups"].items()
        )
        requests = f"{r['requests']} ({r['errors']})"
        if r["requests"] < r["planned"]:
            requests += f" of {r['planned']}"
        print(
            f"| {r['mode']} | {r['concurrency']} | {requests} "
            f"| {fmt(r['ttfa_ms']['p50'])} / {fmt(r['ttfa_ms']['p95'])} | {fmt(vs, '.3f', '×')} "
            f"| {fmt(r['total_ms']['p50'])} / {fmt(r['total_ms']['p95'])} | {fmt(r['rtf_p50'], '.4f')} "
            f"| {fmt(r['throughput'], '.1f')} | {statuses or '–'} | {lookups or '–'} |"
        )


def print_quality(quality: dict[str, Any]) -> None:
    wer_part = quality.get("wer")
    if wer_part is not None:
        statuses = ", ".join(f"{s} {100 * v:.0f} %" for s, v in wer_part["stitched_chunk_statuses"].items())
        print(
            f"\nQuality, {wer_part['sentences']} sentences through the server's ASR (16 kHz LINEAR16): "
            f"stitched WER {100 * wer_part['stitched_wer']:.1f} %, full-sentence WER "
            f"{100 * wer_part['full_wer']:.1f} % (stitched chunks: {statuses or '–'})."
        )
    pitch = quality.get("pitch")
    if pitch is not None:
        print(
            f"Pitch steps, in process: stitched joints median {fmt(pitch['joint_median_hz'], '.1f')} Hz "
            f"({pitch['joints_measured']} voiced joints); word boundaries of full syntheses median "
            f"{fmt(pitch['natural_median_hz'], '.1f')} Hz ({pitch['natural_boundaries_measured']}); the "
            f"full sentences at the joint's place median {fmt(pitch['same_boundary_median_hz'], '.1f')} Hz "
            f"({pitch['same_boundaries_measured']}); joints failing the joint check: "
            f"{pitch['joints_failing_check']}."
        )


def int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("concurrency levels must be positive")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int_list, default=[1, 4, 16], help="comma-separated levels")
    parser.add_argument("--requests-per-level", type=int, default=120, help="requests per mode and level")
    parser.add_argument("--max-total-s", type=float, default=900.0, help="bound of the load part")
    parser.add_argument("--encoding", choices=[e.value for e in AudioEncoding if e.value != "flac"],
                        default=AudioEncoding.LINEAR16.value)  # fmt: skip
    parser.add_argument("--sample-rate-hz", type=int, default=0, help="0: the voice's native rate")
    parser.add_argument("--request-timeout-s", type=float, default=120.0)
    parser.add_argument("--warmup-timeout-s", type=float, default=600.0)
    parser.add_argument("--quality", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="smoke test: concurrency 1,4, 8 requests each")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "tts_load.json"))
    args = parser.parse_args()
    if args.quick:
        args.concurrency, args.requests_per_level = [1, 4], 8
    if args.requests_per_level < 1:
        parser.error("--requests-per-level must be positive")
    t_start = time.monotonic()
    all_sentences = sentences()
    quality: dict[str, Any] = {}
    proc, target = start_server("--cache", "memory")
    try:
        warm, rows, skipped = asyncio.run(run_load(target, all_sentences, args, t_start))
        load_s = time.monotonic() - t_start
        run_quality = args.quality and load_s <= args.max_total_s
        if run_quality:
            print("quality: stitched vs full WER through the server ...", file=sys.stderr, flush=True)
            quality["wer"] = quality_with_server(target)
    finally:
        stop_server(proc)
    if run_quality:
        print("quality: pitch at the joints, in process ...", file=sys.stderr, flush=True)
        quality["pitch"] = quality_in_process()
    wall_s = time.monotonic() - t_start

    ratio = ratios(rows)
    print(
        f"\n{len(all_sentences)} template sentences, {args.requests_per_level} requests per mode and level, "
        f"{args.encoding} at {args.sample_rate_hz or 'native'} Hz, loopback, in-process cache; "
        f"machine: {os.cpu_count()} vCPU\n"
    )
    print_table(rows, ratio)
    print()
    for concurrency, r in ratio.items():
        print(
            f"concurrency {concurrency}: TTFA p50 stitched / full "
            f"{fmt(r['stitched_ttfa_p50_vs_full'], '.3f', '×')}, cached / full "
            f"{fmt(r['cached_ttfa_p50_vs_full'], '.3f', '×')}"
        )
    if skipped:
        print(f"\nskipped (over --max-total-s {args.max_total_s:.0f}): {', '.join(skipped)}")
    if quality:
        print_quality(quality)
    elif args.quality:
        print(f"\nquality skipped: the load part ran past --max-total-s {args.max_total_s:.0f}")
    print(f"\nwall time {wall_s:.0f} s (load {load_s:.0f} s)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    out.write_text(
        json.dumps(
            {
                "settings": settings,
                "cpu_count": os.cpu_count(),
                "warmup": warm,
                "levels": rows,
                "ratios": {str(k): v for k, v in ratio.items()},
                "quality": quality,
                "skipped": skipped,
                "wall_s": wall_s,
                "load_s": load_s,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
