"""Speech cut by max_utterance_s: no word lost or doubled at a cut, the same text as Recognize."""

from __future__ import annotations

import pytest

from tests.conftest import RunningServer
from tests.helpers import SAMPLE_JFK, normalize, speech_clips, word_errors
from voxwire import Client, Endpointing, RecognitionConfig, StreamUpdate

JFK = (
    "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country."
)


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Client:
    with Client(server.target, timeout_s=120) as c:
        yield c  # type: ignore[misc]


def _finals(updates: list[StreamUpdate]) -> list[str]:
    return [u.result.transcript for u in updates if u.result is not None and u.result.is_final]


def _deletions(reference: str, hypothesis: str) -> int:
    """Reference words the hypothesis lacks (longest common subsequence)."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    row = [0] * (len(hyp) + 1)
    for x in ref:
        prev = 0
        for j, y in enumerate(hyp, 1):
            prev, row[j] = row[j], (prev + 1) if x == y else max(row[j], row[j - 1])
    return len(ref) - row[len(hyp)]


def _dictated(max_utterance_s: float) -> RecognitionConfig:
    # A long silence_ms: only max_utterance_s ends the utterances, as in dictation without pauses.
    return RecognitionConfig(endpointing=Endpointing(silence_ms=3000, max_utterance_s=max_utterance_s))


def test_jfk_cut_every_few_seconds_keeps_every_word(client: Client) -> None:
    finals = _finals(list(client.stream(str(SAMPLE_JFK), _dictated(3.0), chunk_ms=20)))
    assert len(finals) >= 3, finals  # it was cut
    # No word lost (a 3 s piece may still mishear one: "my" as "am I"), and no word is
    # said twice across a cut.
    assert _deletions(JFK, " ".join(finals)) <= 1, finals
    for before, after in zip(finals, finals[1:], strict=False):
        assert normalize(before)[-1] != normalize(after)[0], finals
    assert word_errors(JFK, " ".join(finals))[0] <= 2, finals


def test_long_dictation_streams_as_well_as_recognize(client: Client) -> None:
    (clip,) = speech_clips(["ljspeech_LJ001-0013_to_0018_concat"])  # 43 s of read speech
    whole = client.recognize(str(clip.path)).text
    finals = _finals(list(client.stream(str(clip.path), _dictated(8.0), chunk_ms=20)))
    assert len(finals) >= 5, finals
    streamed = " ".join(finals)
    assert _deletions(clip.text, streamed) <= _deletions(clip.text, whole) + 1, (streamed, whole)
    stream_errors, words = word_errors(clip.text, streamed)
    whole_errors, _ = word_errors(clip.text, whole)
    assert stream_errors <= whole_errors + 3, (streamed, whole)
    assert stream_errors / words <= 0.06, streamed
