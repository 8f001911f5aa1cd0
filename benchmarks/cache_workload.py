"""The recognition cache under a voice assistant's workload: how much speech bypasses the model, how
fast a hit answers, and whether any hit answered wrongly.

The workload: `--requests` Recognize calls (default 400), one after another, drawn with a power law
(Zipf, exponent `--zipf`) from the sources of both dev sets: every speech clip of <= 10 s (commands,
read sentences, accents, noisy speech; the same sentences said by other speakers are sources of their
own), the noise clips, and assistant replies synthesized by the server itself. A source's first
request is its original recording. Later requests of a speech source are the same bytes again (a
retry, a replay after a reconnect) or a copy through another channel: 20 dB of real noise, Opus or
MP3 at 32 kbit/s, ±6 dB, 30 ms later (tests/fingerprint_eval.py's degradations). A reply is
synthesized (Synthesize, the same tenant) and then heard back as a speaker plays it: -10 dB, room noise
at 20 dB SNR, cut where a VAD would cut.

Runs, each against a fresh voxwire-server in this run: the cache off (the baseline: every utterance
decoded), the cache in process, and the cache in a redis-server started for the run (an empty
database each time), with the fuzzy and self-echo tiers on; `--rounds` times over, times the median
of the rounds. A decoded request's cost is also given against the baseline's time for the very same
request (median of the ratios), since the requests a cache leaves to the model are not a random
sample of the workload (first hearings, mostly). Reported per run: requests answered without the
model (every utterance from a cache tier), utterances likewise, the server-side time of a Recognize
that was answered from the cache against one that was decoded
(RecognizeResponse.processing_latency_ms, p50), the exact tier's own lookup time (GetStats, p50),
and wrong answers:

- a hit on a source's first request (nothing can legitimately be known of a recording never heard);
- a hit with another recording's text: one the model gave (in this run or the baseline) only for
  other sources, never for a copy of this one;
- speech dropped (NEGATIVE, SELF_ECHO) where the model, on the very same audio (the baseline run),
  heard words.

Also reported: how many exact and fuzzy hits gave the very text the model gives for that audio (a
fuzzy hit answers with the text of the copy heard first, which may differ from the model's text for
a noisier copy by a word).

    .venv/bin/python benchmarks/cache_workload.py [--requests 400] [--zipf 1.1] [--seed 7] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tests.fingerprint_eval as q  # noqa: E402
from benchmarks.server_process import start_server, stop_server  # noqa: E402
from tests.helpers import DATA_DIR, DATA_DIR_2, noise_clips  # noqa: E402
from tests.redis_server import redis_server  # noqa: E402
from voxwire import AudioEncoding, CacheStatus, Client, RecognitionConfig  # noqa: E402

TENANT = "workload"
SECRET = "benchmark-cache-secret-0123"
ANSWERED = {
    CacheStatus.EXACT,
    CacheStatus.FUZZY,
    CacheStatus.CORRECTION,
    CacheStatus.NEGATIVE,
    CacheStatus.SELF_ECHO,
}
COPIES = ("real noise 20 dB", "opus 32 kbit/s", "mp3 32 kbit/s", "gain +6 dB", "gain -6 dB", "shift 30 ms")
# Of later requests of a speech source: the same bytes again, or a copy through another channel.
EXACT_SHARE = 0.5
FLAGS = ["--asr-cache-tiers", "correction,exact,negative,self_echo", "--asr-cache-fuzzy", "on"]


@dataclass
class Source:
    id: str
    kind: str  # "speech", "noise" or "reply"
    pcm: np.ndarray
    text: str = ""  # a reply's text


@dataclass(frozen=True)
class Request:
    source: int
    form: str  # "original", "exact" or a copy's name
    seed: int


def _sources(max_s: float) -> list[Source]:
    found = []
    for data in (DATA_DIR, DATA_DIR_2):
        if (data / "manifest.jsonl").is_file():
            found += [
                Source(r.id, "speech", r.pcm) for r in q.recordings(data) if r.pcm.size <= max_s * q.RATE_HZ
            ]
    for path in noise_clips():
        pcm = q.load_pcm(path)
        for n, start in enumerate(range(0, max(1, pcm.size - q.RATE_HZ), int(4 * q.RATE_HZ))):
            found.append(Source(f"{path.stem}#{n}", "noise", pcm[start : start + 4 * q.RATE_HZ]))
    found += [Source(f"reply{i}", "reply", np.zeros(0, np.int16), text) for i, text in enumerate(q.REPLIES)]
    return found


def _workload(sources: list[Source], count: int, exponent: float, seed: int) -> list[Request]:
    rng = random.Random(seed)
    order = list(range(len(sources)))
    rng.shuffle(order)
    weights = [1 / (rank + 1) ** exponent for rank in range(len(order))]
    seen: Counter[int] = Counter()
    requests = []
    for n in range(count):
        source = rng.choices(order, weights)[0]
        kind = sources[source].kind
        if seen[source] == 0 or kind != "speech":
            form = "original"
        else:
            form = "exact" if rng.random() < EXACT_SHARE else rng.choice(COPIES)
        seen[source] += 1
        requests.append(Request(source, form, n))
    return requests


def _audio(source: Source, request: Request, client: Client, replies: dict[int, np.ndarray]) -> np.ndarray:
    if source.kind == "reply":
        pcm = replies.get(request.source)
        if pcm is None:
            spoken = client.synthesize(
                source.text, tenant_id=TENANT, encoding=AudioEncoding.LINEAR16, sample_rate_hz=16000
            )
            pcm = replies[request.source] = np.frombuffer(spoken.audio, "<i2").copy()
        else:  # the reply spoken again: the server serves it from its phrase cache
            client.synthesize(
                source.text, tenant_id=TENANT, encoding=AudioEncoding.LINEAR16, sample_rate_hz=16000
            )
        return q.played_back(pcm, request.seed)
    if request.form in ("original", "exact"):
        return source.pcm
    degrade: Callable[[np.ndarray, int], np.ndarray] = q.DEGRADATIONS[request.form]
    return degrade(source.pcm, request.seed)


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else float("nan")


Said = list[tuple[int, int, str]]  # (start ms, end ms, transcript) of a request's results


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def _run(
    address: str, sources: list[Source], requests: list[Request], model: dict[int, Said] | None
) -> dict[str, object]:
    """Sends the workload. model: what the model said of each request's audio (the cache-off run,
    which fills it when it is empty)."""
    replies: dict[int, np.ndarray] = {}
    seen: Counter[int] = Counter()
    # Which sources' recordings the model gave each text for, in this run and the baseline.
    producers: dict[str, set[int]] = {}
    config = RecognitionConfig(encoding=AudioEncoding.LINEAR16, sample_rate_hz=16000, tenant_id=TENANT)
    outcome: Counter[str] = Counter()
    hit_ms: list[float] = []
    miss_ms: list[float] = []
    request_ms: list[float] = []
    decoded: list[int] = []
    utterances = answered_utterances = same_as_model = compared = 0
    wrong: list[str] = []
    baseline = model if model else None
    with Client(address, timeout_s=120) as client:
        for n, request in enumerate(requests):
            source = sources[request.source]
            audio = _audio(source, request, client, replies)
            first = seen[request.source] == 0
            seen[request.source] += 1
            response = client.recognize(audio.astype("<i2").tobytes(), config)
            said = [(r.audio_start_ms, r.audio_end_ms, r.transcript) for r in response.results]
            if baseline is None and model is not None:
                model[n] = said
            statuses = [r.cache_status for r in response.results]
            utterances += len(statuses)
            answered_utterances += sum(s in ANSWERED for s in statuses)
            all_answered = bool(statuses) and all(s in ANSWERED for s in statuses)
            (hit_ms if all_answered else miss_ms).append(response.processing_latency_ms)
            request_ms.append(response.processing_latency_ms)
            if not all_answered:
                decoded.append(n)
            outcome["bypassed" if all_answered else "decoded"] += 1
            for r in response.results:
                outcome[f"{source.kind}:{r.cache_status.value}"] += 1
                if r.cache_status not in ANSWERED:
                    producers.setdefault(r.transcript, set()).add(request.source)
            if baseline is not None:
                for _, _, text in baseline.get(n, []):
                    producers.setdefault(text, set()).add(request.source)
            if source.kind != "speech":
                continue
            decoded_here = baseline.get(n, []) if baseline is not None else []
            for r in response.results:
                if r.cache_status not in ANSWERED:
                    continue
                why = ""
                span = (r.audio_start_ms, r.audio_end_ms)
                if first:
                    why = "a hit on a recording never heard before"
                elif r.cache_status in (CacheStatus.NEGATIVE, CacheStatus.SELF_ECHO):
                    lost = [t for s0, s1, t in decoded_here if t and _overlaps(span, (s0, s1))]
                    if lost:
                        why = f"speech dropped as {r.cache_status.value}: the model heard {lost[0]!r}"
                elif request.source not in producers.get(r.transcript, set()):
                    why = f"another recording's text: {r.transcript!r}"
                if why:
                    wrong.append(f"{source.id} ({request.form}): {why}")
                if r.cache_status in (CacheStatus.EXACT, CacheStatus.FUZZY) and decoded_here:
                    compared += 1
                    same_as_model += any(t == r.transcript for _, _, t in decoded_here)
        stats = client.stats(tenant_id=TENANT)
    exact = next((t for t in stats.tiers if t.tier == "asr.exact"), None)
    return {
        "requests": len(requests),
        "bypassed_requests": outcome["bypassed"],
        "utterances": utterances,
        "answered_utterances": answered_utterances,
        "hit_request_ms_p50": statistics.median(hit_ms) if hit_ms else float("nan"),
        "miss_request_ms_p50": statistics.median(miss_ms) if miss_ms else float("nan"),
        "miss_request_ms_p95": _pct(miss_ms, 0.95),
        "exact_lookup_hit_ms_p50": exact.hit_latency_p50_ms if exact else float("nan"),
        "model_seconds_saved": sum(t.model_seconds_saved for t in stats.tiers),
        "bypass_ratio_server": stats.asr_model_bypass_ratio,
        "collisions": sum(t.collisions for t in stats.tiers),
        "hits_as_the_model_on_that_audio": [same_as_model, compared],
        "request_ms": request_ms,
        "decoded_requests": decoded,
        "by_kind_and_status": dict(sorted(outcome.items())),
        "wrong": wrong,
    }


_TIMES = (
    "hit_request_ms_p50",
    "miss_request_ms_p50",
    "miss_request_ms_p95",
    "exact_lookup_hit_ms_p50",
    "decoded_vs_off",
)


def _paired(run: dict[str, object], off: dict[str, object]) -> float:
    """The median, over the requests this run decoded, of its time over the baseline's for the same
    request: the cost of consulting (and filling) the cache, on the same audio."""
    mine, base = run["request_ms"], off["request_ms"]
    return statistics.median(mine[i] / base[i] for i in run["decoded_requests"])  # type: ignore[index, attr-defined]


def _merged(results: list[dict[str, object]]) -> dict[str, object]:
    """The first round's counts, the median over rounds of each time, every round's wrong answers."""
    merged = dict(results[0])
    for name in _TIMES:
        merged[name] = statistics.median(float(r[name]) for r in results)  # type: ignore[arg-type]
    merged["wrong"] = [line for r in results for line in r["wrong"]]  # type: ignore[attr-defined]
    merged["rounds"] = results
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--max-clip-s", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cache_workload.json")
    args = parser.parse_args()
    if not (DATA_DIR / "manifest.jsonl").is_file():
        raise SystemExit(f"no speech-dev data at {DATA_DIR} (set VOXWIRE_DATA_DIR)")
    sources = _sources(args.max_clip_s)
    requests = _workload(sources, args.requests, args.zipf, args.seed)
    kinds = Counter(sources[r.source].kind for r in requests)
    forms = Counter(r.form for r in requests)
    print(
        f"{len(sources)} sources; {len(requests)} requests: {dict(kinds)}; forms {dict(forms)}",
        file=sys.stderr,
    )
    rounds: dict[str, list[dict[str, object]]] = {"off": [], "memory": [], "redis": []}
    model: dict[int, Said] = {}
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as (url, _):
        for round_ in range(args.rounds):
            # The baseline first: it records what the model says of every request's audio. Each round
            # has a Redis database of its own: every run starts with an empty cache.
            database = url.rsplit("/", 1)[0] + f"/{round_}"
            for name, flags in (
                ("off", ["--asr-cache-tiers", "", "--asr-cache-fuzzy", "off"]),
                ("memory", FLAGS),
                ("redis", [*FLAGS, "--cache", database, "--cache-key-secret", SECRET]),
            ):
                proc, address = start_server(*flags)
                try:
                    rounds[name].append(_run(address, sources, requests, model))
                finally:
                    stop_server(proc)
                rounds[name][-1]["decoded_vs_off"] = _paired(rounds[name][-1], rounds["off"][-1])
                shown = {k: v for k, v in rounds[name][-1].items() if k not in ("wrong", "request_ms")}
                print(f"round {round_ + 1} {name}: {json.dumps(shown)}", file=sys.stderr)
    runs = {name: _merged(results) for name, results in rounds.items()}
    print(f"\n{len(requests)} Recognize requests, Zipf {args.zipf}, seed {args.seed}: {dict(kinds)}\n")
    print("| cache | requests without the model | utterances without the model | Recognize p50, hit | "
          "Recognize p50, decoded (the same requests against off) | exact lookup p50 (GetStats) | "
          "hits = the model's text | collision alarms | wrong answers |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for name, run in runs.items():
        miss = float(run["miss_request_ms_p50"])  # type: ignore[arg-type]
        ratio = float(run["decoded_vs_off"])  # type: ignore[arg-type]
        same, compared = run["hits_as_the_model_on_that_audio"]  # type: ignore[misc]
        print(
            f"| {name} | {run['bypassed_requests']} / {run['requests']} "
            f"({100 * int(run['bypassed_requests']) / int(run['requests']):.0f} %) "  # type: ignore[call-overload]
            f"| {run['answered_utterances']} / {run['utterances']} "
            f"| {float(run['hit_request_ms_p50']):.1f} ms "  # type: ignore[arg-type]
            f"| {miss:.0f} ms ({ratio:.2f}×) "
            f"| {float(run['exact_lookup_hit_ms_p50']):.2f} ms "  # type: ignore[arg-type]
            f"| {same} / {compared} | {run['collisions']} "
            f"| {len(run['wrong'])} |"  # type: ignore[arg-type]
        )
    for name, run in runs.items():
        for line in run["wrong"]:  # type: ignore[attr-defined]
            print(f"wrong ({name}): {line}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "runs": runs}, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
