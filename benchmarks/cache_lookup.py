"""What the recognition cache itself costs per utterance, apart from gRPC and the model: the
RecognitionCache in this process over the in-process store and over a redis-server started for the
run, with the default tiers plus fuzzy and self-echo.

Every speech clip of <= 10 s of both dev sets is looked up once (a miss: the lookup reads the exact
and correction keys, fingerprints the audio off the event loop and reads the fingerprint index) and
stored as the model's answer would be (the exact entry; the fingerprint's index in the background,
waited for apart), then looked up again (an exact hit). p50 and p95 over the clips, the first five
left out (warm-up).

    .venv/bin/python benchmarks/cache_lookup.py
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tests.fingerprint_eval as q  # noqa: E402
from tests.helpers import DATA_DIR, DATA_DIR_2  # noqa: E402
from tests.redis_server import redis_server  # noqa: E402
from voxwire_server.caches.keyring import Keyring  # noqa: E402
from voxwire_server.caches.recognition import RecognitionCache, RecognitionCacheSettings  # noqa: E402
from voxwire_server.domain import Alternative, CacheStatus, DecodeOptions, RequestContext, Tier  # noqa: E402
from voxwire_server.engines.base import WindowResult  # noqa: E402
from voxwire_server.storage import MemoryStore, RedisStore, Store  # noqa: E402

WARM_UP = 5
SAID = WindowResult((Alternative("what the model said", 0.9),))


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def _measure(store: Store, clips: list[q.Recording]) -> dict[str, float]:
    settings = RecognitionCacheSettings(fuzzy=True, self_echo=True)
    cache = RecognitionCache(Keyring(store, key_secret=b"benchmark-lookup-secret"), "v", settings)
    context = RequestContext(tenant_id="bench", user_id="u")
    miss, store_ms, index_ms, hit = [], [], [], []
    for clip in clips:
        started = time.perf_counter()
        lookup = await cache.lookup(clip.pcm, DecodeOptions(), context)
        looked = time.perf_counter()
        if lookup.probe is None or lookup.status is not CacheStatus.MISS:
            continue  # the known same-recording pairs of speech-dev (clean and noisy) hit
        await cache.store(lookup.probe, SAID, Tier.FAST, 0.3, index_later=True)
        stored = time.perf_counter()
        await cache.flush()
        indexed = time.perf_counter()
        again = await cache.lookup(clip.pcm, DecodeOptions(), context)
        answered = time.perf_counter()
        assert again.status is CacheStatus.EXACT
        miss.append((looked - started) * 1000)
        store_ms.append((stored - looked) * 1000)
        index_ms.append((indexed - stored) * 1000)
        hit.append((answered - indexed) * 1000)
    await cache.aclose()
    out = {}
    for name, values in (("miss_lookup", miss), ("store", store_ms), ("index", index_ms), ("exact_hit", hit)):
        kept = values[WARM_UP:]
        out[f"{name}_ms_p50"] = statistics.median(kept)
        out[f"{name}_ms_p95"] = _pct(kept, 0.95)
    return out


async def _main() -> dict[str, dict[str, float]]:
    clips = [
        r
        for data in (DATA_DIR, DATA_DIR_2)
        if (data / "manifest.jsonl").is_file()
        for r in q.recordings(data)
        if r.pcm.size <= 10 * q.RATE_HZ
    ]
    if not clips:
        raise SystemExit(f"no speech-dev data at {DATA_DIR} (set VOXWIRE_DATA_DIR)")
    results = {"memory": await _measure(MemoryStore(256 << 20), clips)}
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as (url, _):
        store = RedisStore(url, timeout_s=1.0)
        try:
            results["redis"] = await _measure(store, clips)
        finally:
            await store.aclose()
    print(f"\n{len(clips)} clips of <= 10 s\n")
    print("| store | miss: lookup before the decode | exact entry stored | index (background) | exact hit |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        cells = [
            f"{r[f'{k}_ms_p50']:.2f} / {r[f'{k}_ms_p95']:.2f} ms"
            for k in ("miss_lookup", "store", "index", "exact_hit")
        ]
        print(f"| {name} (p50 / p95) | " + " | ".join(cells) + " |")
    return results


def main() -> None:
    results = asyncio.run(_main())
    out = ROOT / "benchmarks" / "results" / "cache_lookup.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
