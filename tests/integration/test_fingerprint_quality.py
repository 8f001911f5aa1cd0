"""Acceptance of the recognition cache's audio fingerprint on the dev data: degraded copies of a
recording are found (LSH keys shared AND match), different recordings never are (same text by another
speaker included), noise never meets speech, and the server's own replies are recognised when heard back.

The data, degradations and replies are tests/fingerprint_eval.py's, shared with
benchmarks/fingerprint_quality.py."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from tests.fingerprint_eval import (
    CROSS_DEGRADATIONS,
    DEGRADATIONS,
    REPLIES,
    Pcm,
    degraded,
    degraded_sample,
    entry,
    hits,
    load_pcm,
    played_back,
    recordings,
    same_recording_pairs,
    same_text_pairs,
    speech_pieces,
    synthesize_replies,
)
from tests.helpers import DATA_DIR, DATA_DIR_2, noise_clips, require_data, require_data_2
from voxwire_server.caches.fingerprint import (
    Fingerprint,
    find_within,
    fingerprint,
    match,
    probe_keys,
)

# --- tests --------------------------------------------------------------------------------------------

DATA_SETS = ["speech-dev", "speech-dev-2"]


def data_dir(name: str) -> Path:
    if name == "speech-dev":
        require_data()
        return DATA_DIR
    require_data_2()
    return DATA_DIR_2


@pytest.mark.parametrize("data_set", DATA_SETS)
def test_degraded_copies_of_a_recording_hit(data_set: str) -> None:
    clips = recordings(data_dir(data_set))
    entries = [entry(r.id, r.pcm) for r in clips]
    misses: dict[str, list[str]] = {}
    for name in DEGRADATIONS:
        sample = degraded_sample(clips, name)
        missed = [entries[i].id for i in sample if not hits(entries[i], degraded(clips[i], name, i))]
        if len(missed) > 0.1 * len(sample):
            misses[name] = missed
    assert not misses, {name: f"{len(m)} missed: {m[:5]}" for name, m in misses.items()}


@pytest.mark.parametrize("sets", [("speech-dev",), ("speech-dev", "speech-dev-2")], ids=["dev", "dev+dev2"])
def test_different_recordings_never_hit(sets: tuple[str, ...]) -> None:
    clips = [r for name in sets for r in recordings(data_dir(name))]
    entries = [entry(r.id, r.pcm) for r in clips]
    queries: list[tuple[str, str, Fingerprint]] = [
        (r.id, "clean", e.fp) for r, e in zip(clips, entries, strict=True)
    ]
    for name in CROSS_DEGRADATIONS:
        queries += [(clips[i].id, name, degraded(clips[i], name, i)) for i in degraded_sample(clips, name)]
    probes = [frozenset(probe_keys(fp)) for _, _, fp in queries]
    same = same_recording_pairs()
    false_hits, pairs = [], 0
    for stored in entries:
        for (query_id, how, fp), keys in zip(queries, probes, strict=True):
            if query_id == stored.id or frozenset((query_id, stored.id)) in same:
                continue
            pairs += 1
            if hits(stored, fp, keys):
                false_hits.append((stored.id, query_id, how))
    assert pairs > 0
    assert len(false_hits) < 0.001 * pairs, false_hits[:10]
    by_id = {r.id: r for r in clips}
    same_text = [(a, b) for a, b in same_text_pairs() if a in by_id and b in by_id]
    assert len(same_text) >= 30
    assert not [(a, b, how) for a, b, how in false_hits if (a, b) in same_text or (b, a) in same_text]


def test_same_text_by_another_speaker_never_matches_in_either_direction() -> None:
    clips = {r.id: r for r in recordings(data_dir("speech-dev"))}
    matched = []
    for i, (a, b) in enumerate(same_text_pairs()):
        for query, stored in ((clips[a], clips[b]), (clips[b], clips[a])):
            stored_entry = entry(stored.id, stored.pcm)
            for fp in (fingerprint(query.pcm), degraded(query, "real noise 20 dB", i)):
                if match(fp, stored_entry.fp) is not None:
                    matched.append((query.id, stored.id))
    assert not matched


def test_noise_never_meets_speech() -> None:
    speech = list(recordings(data_dir("speech-dev")))
    if (DATA_DIR_2 / "manifest.jsonl").is_file():
        speech += recordings(DATA_DIR_2)
    noises = [entry(path.stem, load_pcm(path)) for path in noise_clips()]
    speech_entries = [entry(r.id, r.pcm) for r in speech]
    crossed = [(n.id, s.id) for n in noises for s in speech_entries if hits(s, n.fp) or hits(n, s.fp)]
    assert not crossed


@pytest.fixture(scope="module")
def replies() -> list[Pcm]:
    return synthesize_replies()


def test_replies_heard_back_are_found_in_what_was_synthesized(replies: list[Pcm]) -> None:
    assert len(replies) == len(REPLIES)
    require_data()  # the room noise
    found = [
        find_within(fingerprint(reply), fingerprint(played_back(reply, i))) for i, reply in enumerate(replies)
    ]
    assert sum(m is not None for m in found) >= 0.95 * len(replies), found


def test_no_speech_clip_is_found_within_a_reply(replies: list[Pcm]) -> None:
    speech = list(recordings(data_dir("speech-dev")))
    if (DATA_DIR_2 / "manifest.jsonl").is_file():
        speech += recordings(DATA_DIR_2)
    containers = [fingerprint(reply) for reply in replies]
    pieces = [(r.id, fingerprint(p)) for r in speech for p in speech_pieces(r)]
    found = [
        (i, rid) for i, c in enumerate(containers) for rid, fp in pieces if find_within(c, fp) is not None
    ]
    assert not found
    # Replies are not found inside each other either (distinct texts).
    crossed = [
        (i, j)
        for (i, a), (j, b) in itertools.permutations(enumerate(replies), 2)
        if find_within(fingerprint(a), fingerprint(played_back(b, j))) is not None
    ]
    assert not crossed
