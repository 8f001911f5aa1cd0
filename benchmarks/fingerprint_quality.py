"""Quality of the recognition cache's audio fingerprint (voxwire_server.caches.fingerprint) on both dev sets.

Same recording: every speech clip of speech-dev and speech-dev-2, degraded (20 dB white / real noise,
MP3 and Opus at 32 kbit/s, ±6 dB, a 30 ms shift, 150 ms boundary changes;
tests/fingerprint_eval.py defines them). A copy hits when probe_keys(copy) shares a bucket with
index_keys(original) AND match(copy, original) succeeds. Different recordings: every ordered pair of
clips (entry, query), the query clean and under every degradation, known same-recording pairs excluded;
the same_text_different_speaker pairs of speech-dev/pairs counted apart. Noise: the noise clips against
every speech clip, both ways. Self-echo: 20 replies from the project's TTS played back (-10 dB, room
noise at 20 dB SNR, VAD-like cuts) looked for with find_within in the clean reply; foreign speech
pieces (1.5 s) looked for in every reply. BER distributions come from the best alignment whatever its
BER (the module's private _best_match / _best_within, the thresholds left out).

    .venv/bin/python benchmarks/fingerprint_quality.py [--data DIR] [--data-2 DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tests.fingerprint_eval as q  # noqa: E402
from tests.helpers import DATA_DIR, DATA_DIR_2, noise_clips  # noqa: E402
from voxwire_server.caches import fingerprint as fpm  # noqa: E402


def _pct(values: list[float], p: float) -> float:
    return float(np.quantile(values, p)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DATA_DIR)
    parser.add_argument("--data-2", type=Path, default=DATA_DIR_2)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "fingerprint_quality.json"
    )
    args = parser.parse_args()

    clips = list(q.recordings(args.data))
    if (args.data_2 / "manifest.jsonl").is_file():
        clips += q.recordings(args.data_2)
    audio_s = sum(r.pcm.size for r in clips) / q.RATE_HZ
    print(f"{len(clips)} clips, {audio_s:.0f} s", file=sys.stderr)

    start = time.perf_counter()
    entries = [q.entry(r.id, r.pcm) for r in clips]
    fp_ms_per_s = 0.0
    t0 = time.perf_counter()
    for r in clips:
        fpm.fingerprint(r.pcm)
    fp_ms_per_s = (time.perf_counter() - t0) * 1000 / audio_s
    bytes_per_s = sum(len(e.fp.to_bytes()) for e in entries) / audio_s

    degradations: dict[str, dict[str, float]] = {}
    copies: dict[str, list[fpm.Fingerprint]] = {}
    for name in q.DEGRADATIONS:
        copies[name] = [q.degraded(r, name, i) for i, r in enumerate(clips)]
        bers, lsh, hit = [], 0, 0
        for e, copy in zip(entries, copies[name], strict=True):
            best = fpm._best_match(copy, e.fp)
            bers.append(best.bit_error_rate if best else 1.0)
            shared = bool(e.keys & set(fpm.probe_keys(copy)))
            lsh += shared
            hit += shared and fpm.match(copy, e.fp) is not None
        degradations[name] = {
            "hit_rate": hit / len(clips),
            "lsh_rate": lsh / len(clips),
            "ber_p50": _pct(bers, 0.5),
            "ber_p99": _pct(bers, 0.99),
            "ber_max": max(bers),
        }
        print(name, degradations[name], file=sys.stderr)

    same = q.same_recording_pairs()
    same_text = {frozenset(p) for p in q.same_text_pairs()}
    queries = [("clean", i, e.fp) for i, e in enumerate(entries)]
    queries += [(name, i, fp) for name, fps in copies.items() for i, fp in enumerate(fps)]
    probes = [frozenset(fpm.probe_keys(fp)) for _, _, fp in queries]
    pairs = lsh_shared = 0
    false_hits: list[tuple[str, str, str]] = []
    for e in entries:
        for (how, i, fp), keys in zip(queries, probes, strict=True):
            other = clips[i].id
            if other == e.id or frozenset((other, e.id)) in same:
                continue
            pairs += 1
            if e.keys & keys:
                lsh_shared += 1
                if fpm.match(fp, e.fp) is not None:
                    false_hits.append((e.id, other, how))
    cross_bers = []
    for a, b in itertools.combinations(range(len(clips)), 2):
        if frozenset((clips[a].id, clips[b].id)) in same:
            continue
        best = fpm._best_match(entries[a].fp, entries[b].fp)
        if best is not None:
            cross_bers.append(best.bit_error_rate)
    by_id = {e.id: e for e in entries}
    text_bers = [
        b.bit_error_rate
        for pair in same_text
        for x, y in itertools.permutations(pair)
        if (b := fpm._best_match(by_id[x].fp, by_id[y].fp)) is not None
    ]
    text_false = [h for h in false_hits if frozenset(h[:2]) in same_text]
    known_same = [
        (a, b, m.bit_error_rate if (m := fpm._best_match(by_id[a].fp, by_id[b].fp)) else None)
        for a, b in (tuple(p) for p in same)
        if a in by_id and b in by_id
    ]

    noises = [q.entry(p.stem, q.load_pcm(p)) for p in noise_clips()]
    noise_hits = sum(q.hits(s, n.fp) for n in noises for s in entries)
    speech_in_noise = sum(q.hits(n, s.fp) for n in noises for s in entries)

    replies = q.synthesize_replies()
    containers = [fpm.fingerprint(r) for r in replies]
    echo_bers = []
    echo_found = 0
    for i, reply in enumerate(replies):
        played = fpm.fingerprint(q.played_back(reply, i))
        best = fpm._best_within(containers[i], played)
        echo_bers.append(best.bit_error_rate if best else 1.0)
        echo_found += fpm.find_within(containers[i], played) is not None
    pieces = [fpm.fingerprint(p) for r in clips for p in q.speech_pieces(r)]
    foreign_bers, foreign_found = [], 0
    for c in containers:
        for piece in pieces:
            best = fpm._best_within(c, piece)
            if best is not None:
                foreign_bers.append(best.bit_error_rate)
                foreign_found += best.bit_error_rate <= fpm.WITHIN_MAX_BER
    elapsed_s = time.perf_counter() - start

    results = {
        "clips": len(clips),
        "audio_s": audio_s,
        "degradations": degradations,
        "cross": {
            "pairs": pairs,
            "lsh_shared": lsh_shared,
            "false_hits": len(false_hits),
            "false_hit_examples": false_hits[:20],
            "ber_min": min(cross_bers),
            "ber_p01": _pct(cross_bers, 0.01),
            "compared": len(cross_bers),
        },
        "same_text_different_speaker": {
            "pairs": len(same_text),
            "false_hits": len(text_false),
            "ber_min": min(text_bers),
        },
        "known_same_recording_pairs": known_same,
        "noise": {
            "noise_hits_speech": noise_hits,
            "speech_hits_noise": speech_in_noise,
            "pairs": len(noises) * len(entries),
        },
        "self_echo": {
            "replies": len(replies),
            "found": echo_found,
            "ber_p50": _pct(echo_bers, 0.5),
            "ber_max": max(echo_bers),
            "foreign_pieces": len(pieces) * len(containers),
            "foreign_found": foreign_found,
            "foreign_ber_min": min(foreign_bers),
        },
        "thresholds": {
            "match_max_ber": fpm.MATCH_MAX_BER,
            "match_short_max_ber": fpm.MATCH_SHORT_MAX_BER,
            "within_max_ber": fpm.WITHIN_MAX_BER,
        },
        "fingerprint_ms_per_audio_s": fp_ms_per_s,
        "bytes_per_audio_s": bytes_per_s,
        "elapsed_s": elapsed_s,
    }

    print(f"\n{len(clips)} clips of speech-dev + speech-dev-2 ({audio_s:.0f} s)\n")
    print("| same recording | hit (LSH ∧ match) | LSH shared | BER p50 | BER p99 | BER max |")
    print("|---|---|---|---|---|---|")
    for name, d in degradations.items():
        print(
            f"| {name} | {100 * d['hit_rate']:.1f} % | {100 * d['lsh_rate']:.1f} % | {d['ber_p50']:.3f} | "
            f"{d['ber_p99']:.3f} | {d['ber_max']:.3f} |"
        )
    c, t, n, s = (
        results["cross"],
        results["same_text_different_speaker"],
        results["noise"],
        results["self_echo"],
    )
    print("\n| different recordings | value |")
    print("|---|---|")
    print(f"| cross pairs (entry × query, clean + 10 degradations) | {c['pairs']} |")
    print(f"| false hits | {c['false_hits']} ({100 * c['false_hits'] / c['pairs']:.4f} %) |")
    print(f"| LSH candidates among them | {100 * c['lsh_shared'] / c['pairs']:.1f} % |")
    print(f"| clean-vs-clean best BER: min / p01 | {c['ber_min']:.3f} / {c['ber_p01']:.3f} |")
    print(f"| same text, other speaker: false hits / min BER | {t['false_hits']} / {t['ber_min']:.3f} |")
    print(
        f"| noise → speech / speech → noise hits | {n['noise_hits_speech']} / {n['speech_hits_noise']} "
        f"of {n['pairs']} |"
    )
    print(
        f"| self-echo found | {s['found']}/{s['replies']} "
        f"(BER p50 {s['ber_p50']:.3f}, max {s['ber_max']:.3f}) |"
    )
    print(
        f"| foreign speech found in a reply | {s['foreign_found']}/{s['foreign_pieces']} "
        f"(min BER {s['foreign_ber_min']:.3f}) |"
    )
    print(f"| fingerprint time | {fp_ms_per_s:.2f} ms per s of audio |")
    print(f"| fingerprint size | {bytes_per_s:.0f} bytes per s of audio |")
    print(f"\nknown same-recording pairs (best BER): {known_same}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {args.out} ({elapsed_s:.0f} s)")


if __name__ == "__main__":
    main()
