"""Resumable streams: what keeping stream state costs, and how fast a stream resumes.

Cost: the same speech-dev clips (<= 10 s), streamed by --concurrency clients at once in real time
(100 ms chunks, interim results on), against voxwire-server processes started one after another
in this run: `--state off` (the baseline: no state kept), `--state memory` and `--state redis://…`
(a redis-server started for the run, noeviction), in rounds (off, redis, memory, off, …). Per
server: the final's latency after the end of audio (client side: the last chunk leaving the client
to the final arriving; end_of_audio follows the last chunk at once), p50 and p95, and the server's
CPU seconds per second of audio (/proc/<pid>/stat). Medians over the rounds; ratios against `off`.

Resume: against the redis server, each clip is streamed in real time and its call cancelled at a
random point 1-6 s in (a client whose connection went); a new call then resumes it with its latest
token. Timed: from the resume call's start to its `resumed` response (the state loaded, checked,
restored and written again), p50 / p99, and the audio the client had to send again. The resumed
stream is then finished, and its finals compared with those of the uninterrupted stream.

    .venv/bin/python benchmarks/resume.py [--clips 16] [--concurrency 4] [--rounds 2] [--resumes 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.asr_accuracy import load  # noqa: E402
from benchmarks.server_process import start_server, stop_server  # noqa: E402
from tests.helpers import DATA_DIR  # noqa: E402
from tests.redis_server import redis_server  # noqa: E402
from voxwire import read_audio_file  # noqa: E402
from voxwire.v1 import common_pb2, recognizer_pb2, recognizer_pb2_grpc  # noqa: E402

CHUNK_BYTES = 3200  # 100 ms of 16 kHz int16
SECRET = "benchmark-resume-secret-0123"

Request = recognizer_pb2.StreamingRecognizeRequest


def _head(token: bytes = b"") -> Request:
    cfg = recognizer_pb2.RecognitionConfig(
        encoding=common_pb2.LINEAR16, sample_rate_hz=16000, interim_results=True
    )
    return Request(config=recognizer_pb2.StreamingRecognitionConfig(config=cfg, resume_token=token))


def _chunks(pcm: bytes) -> list[bytes]:
    return [pcm[i : i + CHUNK_BYTES] for i in range(0, len(pcm), CHUNK_BYTES)]


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _stream(stub: recognizer_pb2_grpc.RecognizerStub, pcm: bytes) -> tuple[float, list[str]]:
    """Streams in real time; (seconds from the last chunk to the last final, the finals)."""
    sent_last = 0.0

    async def requests() -> AsyncIterator[Request]:
        nonlocal sent_last
        yield _head()
        start = time.perf_counter()
        for n, chunk in enumerate(_chunks(pcm)):
            await asyncio.sleep(max(0.0, start + n * 0.1 - time.perf_counter()))
            yield Request(audio=chunk)
        sent_last = time.perf_counter()
        yield Request(end_of_audio=recognizer_pb2.EndOfAudio())

    finals, last = [], 0.0
    async for response in stub.StreamingRecognize(requests()):
        if response.WhichOneof("response") == "result" and response.result.is_final:
            finals.append(response.result.alternatives[0].transcript)
            last = time.perf_counter()
    return max(0.0, last - sent_last), finals


async def _cost_round(address: str, clips: list[bytes], concurrency: int) -> list[float]:
    import grpc.aio

    async with grpc.aio.insecure_channel(address) as channel:
        stub = recognizer_pb2_grpc.RecognizerStub(channel)
        limit = asyncio.Semaphore(concurrency)

        async def one(pcm: bytes) -> float:
            async with limit:
                return (await _stream(stub, pcm))[0]

        return list(await asyncio.gather(*(one(c) for c in clips)))


async def _resume(stub: recognizer_pb2_grpc.RecognizerStub, pcm: bytes, cut_s: float) -> dict[str, object]:
    """One stream cut at cut_s and resumed: the resume's time, the replayed audio and the finals."""
    chunks = _chunks(pcm)
    cut = min(len(chunks) - 1, int(cut_s * 10))
    token, offset, finals = b"", 0, []
    stop = asyncio.Event()

    async def first() -> AsyncIterator[Request]:
        yield _head()
        start = time.perf_counter()
        for n, chunk in enumerate(chunks[:cut]):
            await asyncio.sleep(max(0.0, start + n * 0.1 - time.perf_counter()))
            yield Request(audio=chunk)
        await stop.wait()

    call = stub.StreamingRecognize(first())
    reader = asyncio.ensure_future(_collect(call))
    await asyncio.sleep(cut * 0.1 + 0.05)
    call.cancel()
    stop.set()
    responses = await reader
    for r in responses:
        token = r.resume_token or token
        if r.WhichOneof("response") == "result" and r.result.is_final:
            finals.append(r.result.alternatives[0].transcript)
    resumed_at = asyncio.get_running_loop().create_future()

    async def second() -> AsyncIterator[Request]:
        yield _head(token)
        nonlocal offset
        offset = await resumed_at
        rest = b"".join(chunks)[offset:]
        for chunk in _chunks(rest):
            yield Request(audio=chunk)
        yield Request(end_of_audio=recognizer_pb2.EndOfAudio())

    started = time.perf_counter()
    resume_s = 0.0
    async for r in stub.StreamingRecognize(second()):
        if r.WhichOneof("response") == "resumed":
            resume_s = time.perf_counter() - started
            resumed_at.set_result(r.resume_offset_bytes)
        elif r.WhichOneof("response") == "result" and r.result.is_final:
            finals.append(r.result.alternatives[0].transcript)
    replay_ms = (cut * CHUNK_BYTES - offset) / 32
    return {"resume_s": resume_s, "replay_ms": replay_ms, "finals": finals, "cut_s": cut / 10}


async def _collect(call: object) -> list[recognizer_pb2.StreamingRecognizeResponse]:
    import grpc

    out = []
    try:
        async for r in call:  # type: ignore[attr-defined]
            out.append(r)
    except (grpc.RpcError, asyncio.CancelledError):
        pass
    return out


async def _resumes(address: str, clips: list[bytes], count: int, seed: int) -> list[dict[str, object]]:
    import grpc.aio

    rng = random.Random(seed)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = recognizer_pb2_grpc.RecognizerStub(channel)
        reference = [(await _stream(stub, pcm))[1] for pcm in clips]
        out = []
        for n in range(count):
            i = n % len(clips)
            duration_s = len(clips[i]) / 32000
            got = await _resume(stub, clips[i], rng.uniform(1.0, max(1.1, min(6.0, duration_s - 0.5))))
            got["same_finals"] = got["finals"] == reference[i]
            out.append(got)
        return out


def _metrics_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _size_buckets(metrics_port: int) -> list[tuple[str, int]]:
    """voxwire_stream_state_bytes as (upper bound, writes in that bucket), from the server's /metrics."""
    import re
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    cumulative = [
        (le, int(float(n)))
        for le, n in re.findall(r'^voxwire_stream_state_bytes_bucket\{le="([^"]+)"\} (\S+)$', text, re.M)
    ]
    out, before = [], 0
    for le, n in cumulative:
        out.append((le, n - before))
        before = n
    return out


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DATA_DIR)
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--resumes", type=int, default=40)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "resume.json")
    args = parser.parse_args()
    if not (args.data / "manifest.jsonl").is_file():
        raise SystemExit(f"no speech-dev data at {args.data} (set --data)")
    clips = [read_audio_file(c.path, sample_rate_hz=16000).data for c in load(args.data, 10.0)[: args.clips]]
    audio_s = sum(len(c) for c in clips) / 32000
    results: dict[str, list[dict[str, float]]] = {"off": [], "memory": [], "redis": []}
    resumes: list[dict[str, object]] = []
    sizes: list[tuple[str, int]] = []
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp), policy="noeviction") as (url, _):
        flags = {"off": ["--state", "off"], "memory": ["--state", "memory"], "redis": ["--state", url]}
        for _round in range(args.rounds):
            for name in ("off", "redis", "memory"):
                port = _metrics_port()
                proc, address = start_server(
                    *flags[name], "--resume-secret", SECRET, "--metrics-listen", f"127.0.0.1:{port}"
                )
                try:
                    asyncio.run(_cost_round(address, clips[:2], args.concurrency))  # warm-up
                    cpu = _cpu_s(proc.pid)
                    latencies = asyncio.run(_cost_round(address, clips, args.concurrency))
                    cpu = _cpu_s(proc.pid) - cpu
                    if name == "redis" and _round == 0:
                        sizes = _size_buckets(port)
                    if name == "redis" and _round == 0:
                        resumes = asyncio.run(_resumes(address, clips, args.resumes, args.seed))
                finally:
                    stop_server(proc)
                results[name].append(
                    {
                        "p50_ms": 1000 * statistics.median(latencies),
                        "p95_ms": 1000 * _pct(latencies, 0.95),
                        "cpu_per_audio_s": cpu / audio_s,
                    }
                )
                print(f"round {_round + 1} {name}: {results[name][-1]}", file=sys.stderr)

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    print(f"\n{len(clips)} clips ({audio_s:.0f} s), {args.concurrency} at once, {args.rounds} rounds\n")
    print("| --state | final after end of audio p50 | p95 | CPU s per audio s | vs off (p50, CPU) |")
    print("|---|---|---|---|---|")
    for name in ("off", "memory", "redis"):
        p50, p95, cpu = med(name, "p50_ms"), med(name, "p95_ms"), med(name, "cpu_per_audio_s")
        ratio = f"{p50 / med('off', 'p50_ms'):.2f}×, {cpu / med('off', 'cpu_per_audio_s'):.2f}×"
        print(f"| {name} | {p50:.0f} ms | {p95:.0f} ms | {cpu:.3f} | {ratio} |")
    times = [float(r["resume_s"]) * 1000 for r in resumes]  # type: ignore[arg-type]
    replays = [float(r["replay_ms"]) for r in resumes]  # type: ignore[arg-type]
    same = sum(bool(r["same_finals"]) for r in resumes)
    print(f"\n{len(resumes)} resumes (redis): to `resumed` p50 {statistics.median(times):.1f} ms, "
          f"p99 {_pct(times, 0.99):.1f} ms, max {max(times):.1f} ms; audio sent again p50 "
          f"{statistics.median(replays):.0f} ms, max {max(replays):.0f} ms; finals as uninterrupted: "
          f"{same}/{len(resumes)}")  # fmt: skip
    total = sum(n for _, n in sizes) or 1
    print("\n| state written (bytes, at most) | " + " | ".join(le for le, _ in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    print(
        "| share of writes (cost run, redis) | "
        + " | ".join(f"{100 * n / total:.0f} %" for _, n in sizes)
        + " |"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"cost": results, "resumes": resumes, "state_bytes_buckets": sizes}, indent=1)
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
