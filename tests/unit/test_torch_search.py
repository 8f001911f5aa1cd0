"""The PyTorch decoder's searches on a tiny Whisper-shaped decoder with random weights (written as a
CTranslate2 model.bin): greedy with an explicit K-V cache equals decoding without one, drafts and
stored searches never change the tokens, stale K-V is never used, and a beam search stopped,
serialized and continued is the same search."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="the torch engine's tests need PyTorch (pip install 'voxwire[torch]')"
)

from tests.ct2_model import BLANK, EOT, NO_SPEECH, NO_TIMESTAMPS, SOT, TINY_VOCAB, tiny_whisper  # noqa: E402
from voxwire_server.domain import AudioFormat, Encoding, RecognitionOptions  # noqa: E402
from voxwire_server.engines.torch_decoder import TorchWhisperDecoder  # noqa: E402
from voxwire_server.engines.torch_search import (  # noqa: E402
    SearchRow,
    SearchSettings,
    TorchSearch,
    window_fingerprint,
)
from voxwire_server.sessions.stream_state import StreamState  # noqa: E402

HEAD = (SOT, NO_TIMESTAMPS)
SETTINGS = SearchSettings(max_length=40, suppress_tokens=(SOT, NO_TIMESTAMPS, NO_SPEECH))


@pytest.fixture(scope="module", params=[True, False], ids=["int8", "float32"])
def search(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> TorchSearch:
    directory = tmp_path_factory.mktemp("tiny")
    tiny_whisper(directory)
    decoder = TorchWhisperDecoder(str(directory), quantize=request.param, threads=1)
    return TorchSearch(decoder, eot=EOT, blank=(BLANK,), no_speech=NO_SPEECH)


def _encoder(seed: int, rows: int = 1, positions: int = 12) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, positions, 16)).astype(np.float32)


def _reference(
    search: TorchSearch, encoded: np.ndarray, head: tuple[int, ...], forced: tuple[int, ...]
) -> list[int]:
    """Greedy decoding without a cache: the whole sequence fed again for every token."""
    tokens = list(head)
    end = SETTINGS.end_at(len(head))
    while len(tokens) < end:
        cache = search.decoder.start(encoded, len(tokens) + 1)
        with torch.inference_mode():
            hidden = search.decoder.forward(cache, torch.tensor([tokens]), [len(tokens)])
            logits = search.decoder.log_probs(hidden[0, -1])
        index = len(tokens) - len(head)
        if index < len(forced):
            tokens.append(forced[index])
            continue
        lp = search._processed(logits, tokens[len(head) :], index == 0, SETTINGS)
        tokens.append(int(torch.argmax(lp)))
        if tokens[-1] == EOT:
            break
    out = tokens[len(head) :]
    return out[:-1] if out and out[-1] == EOT else out


def _row(encoded_seed: int, **kwargs: object) -> SearchRow:
    return SearchRow(window=f"w{encoded_seed}", head=kwargs.pop("head", HEAD), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(6))
def test_greedy_with_the_cache_equals_decoding_without_it(search: TorchSearch, seed: int) -> None:
    encoded = _encoder(seed)
    forced = (7, 8, 9) if seed % 2 else ()
    (got,) = search.greedy(encoded, [_row(seed, forced=forced)], SETTINGS)
    assert got.sequences_ids[0] == _reference(search, encoded, HEAD, forced)
    # One pass for the known tokens (it chooses the first free one), then one per token chosen.
    ended = got.state.finished[0].tokens[-1] == EOT
    assert got.passes == len(got.sequences_ids[0]) - len(forced) + ended


@pytest.mark.parametrize("seed", range(6))
def test_a_draft_never_changes_the_tokens_and_a_right_one_saves_the_steps(
    search: TorchSearch, seed: int
) -> None:
    encoded = _encoder(seed)
    (free,) = search.greedy(encoded, [_row(seed)], SETTINGS)
    tokens = free.sequences_ids[0]
    rng = np.random.default_rng(seed)
    drafts = {
        "right": tuple(tokens),
        "random": tuple(int(t) for t in rng.integers(0, TINY_VOCAB - 4, len(tokens))),
        "one changed": tuple(tokens[:3]) + (int((tokens[3] + 1) % 90),) + tuple(tokens[4:])
        if len(tokens) > 4
        else (),
        "one added": tuple(tokens[:2]) + (11,) + tuple(tokens[2:]),
        "one dropped": tuple(tokens[:2]) + tuple(tokens[3:]),
        "too long": tuple(tokens) + (1, 2, 3) * 20,
    }
    for name, draft in drafts.items():
        (got,) = search.greedy(encoded, [_row(seed, draft=draft)], SETTINGS)
        assert got.sequences_ids == free.sequences_ids, name
        if search.decoder.quantized:
            # Every position computed the same way, int8 products summed exactly: the same numbers.
            assert (got.scores, got.no_speech_prob) == (free.scores, free.no_speech_prob), name
        else:
            # float32 products sum in another order for another number of positions.
            assert got.scores == pytest.approx(free.scores, abs=1e-4), name
            assert got.no_speech_prob == pytest.approx(free.no_speech_prob, rel=1e-3), name
    (right,) = search.greedy(encoded, [_row(seed, draft=drafts["right"])], SETTINGS)
    assert right.passes == 1 < free.passes
    assert right.accepted_draft >= len(tokens) - 1


def test_rows_of_a_batch_decode_as_they_would_alone(search: TorchSearch) -> None:
    encoded = _encoder(42, rows=4)
    rows = [
        _row(1),
        _row(2, forced=(7, 8, 9, 10, 11)),
        _row(3, draft=(1, 2, 3)),
        _row(4, forced=(12,), draft=(40, 41)),
    ]
    together = search.greedy(encoded, rows, SETTINGS)
    for i, row in enumerate(rows):
        (alone,) = search.greedy(encoded[i : i + 1], [row], SETTINGS)
        assert together[i].sequences_ids == alone.sequences_ids
        if search.decoder.quantized:
            assert together[i].scores == alone.scores  # which other streams share a batch changes nothing
        else:
            assert together[i].scores == pytest.approx(alone.scores, abs=1e-4)


def test_a_stored_search_over_the_same_window_is_continued_not_redone(search: TorchSearch) -> None:
    encoded = _encoder(7)
    row = _row(7, keep_kv=True)
    (first,) = search.greedy(encoded, [row], SETTINGS)
    (again,) = search.greedy(encoded, [_row(7, state=first.state)], SETTINGS)
    assert again.sequences_ids == first.sequences_ids
    assert again.reused == len(first.state.finished[0].tokens) - len(HEAD)
    assert again.passes == 0  # it had ended: nothing to decode
    # A stored partial with a forced prefix: the same forced tokens go on from it; a final without
    # them cannot (what the model would have chosen there was not computed) and decodes afresh.
    encoded = _encoder(8)
    (free,) = search.greedy(encoded, [_row(8)], SETTINGS)
    forced = (free.sequences_ids[0][0], 3, 4)
    (partial,) = search.greedy(encoded, [_row(8, forced=forced, keep_kv=True)], SETTINGS)
    (same,) = search.greedy(encoded, [_row(8, forced=forced, state=partial.state)], SETTINGS)
    assert same.sequences_ids == partial.sequences_ids and same.reused > len(forced)
    (final,) = search.greedy(encoded, [_row(8, state=partial.state)], SETTINGS)
    assert final.sequences_ids == free.sequences_ids
    assert final.reused == 0
    # A stored partial without forced tokens, cut short by a lower cap: a final over the same window
    # takes all of it and decodes on from its end.
    short = SearchSettings(max_length=12, suppress_tokens=SETTINGS.suppress_tokens)
    (cut,) = search.greedy(encoded, [_row(8, keep_kv=True)], short)
    assert cut.state.finished and cut.state.finished[0].tokens[-1] != EOT
    live = type(cut.state)(
        **{**_fields(cut.state), "settings": SETTINGS.key, "live": cut.state.finished, "finished": ()}
    )
    (longer,) = search.greedy(encoded, [_row(8, state=live)], SETTINGS)
    assert longer.sequences_ids == free.sequences_ids
    assert longer.reused == len(cut.sequences_ids[0])


def test_stale_k_v_is_never_used(search: TorchSearch) -> None:
    (first,) = search.greedy(_encoder(9), [_row(9, keep_kv=True)], SETTINGS)
    other = _encoder(10)
    (free,) = search.greedy(other, [_row(10)], SETTINGS)
    # Another window (the audio grew): the stored K-V is not this window's.
    (got,) = search.greedy(other, [_row(10, state=first.state)], SETTINGS)
    assert got.reused == 0 and got.sequences_ids == free.sequences_ids
    # Other settings, another head: not continued either.
    for row, settings in (
        (_row(9, state=first.state), SearchSettings(max_length=30, suppress_tokens=SETTINGS.suppress_tokens)),
        (_row(9, state=first.state, head=(3, SOT, NO_TIMESTAMPS)), SETTINGS),
    ):
        (got,) = search.greedy(_encoder(9), [row], settings)
        assert got.reused == 0
    # K-V of the wrong size (a state of another model) is ignored, not loaded.
    broken = first.state.finished[0]
    state = type(first.state)(
        **{**_fields(first.state), "finished": (type(broken)(**{**_fields(broken), "kv": b"x" * 10}),)}
    )
    (got,) = search.greedy(_encoder(9), [_row(9, state=state)], SETTINGS)
    assert got.reused == 0 and got.sequences_ids == first.sequences_ids


def _fields(value: object) -> dict[str, object]:
    return {name: getattr(value, name) for name in value.__slots__}  # type: ignore[attr-defined]


@pytest.mark.parametrize("stop_after", [1, 3, 6])
def test_a_beam_search_stopped_serialized_and_continued_is_the_same_search(
    search: TorchSearch, stop_after: int
) -> None:
    encoded = _encoder(11)
    settings = SearchSettings(
        beam_size=4, num_hypotheses=3, max_length=40, suppress_tokens=SETTINGS.suppress_tokens
    )
    row = _row(11, forced=(7,), keep_kv=True)
    (whole,) = search.beam_search(encoded, [row], settings)
    (stopped,) = search.beam_search(encoded, [row], settings, max_steps=stop_after)
    assert stopped.state.live, "the search had not ended"
    # Through a stream state's bytes, as another replica would read it.
    options = RecognitionOptions(AudioFormat(Encoding.LINEAR16, 16000, 1))
    state = StreamState("k", "s", 1, "m", options, {}, 0, 0, None, 0, 0, search=stopped.state)
    restored = StreamState.from_bytes(state.to_bytes()).search
    assert restored == stopped.state
    (continued,) = search.beam_search(
        encoded, [_row(11, forced=(7,), state=restored, keep_kv=True)], settings
    )
    assert continued.reused
    assert continued.sequences_ids == whole.sequences_ids
    assert continued.scores == whole.scores
    assert [b.tokens for b in continued.state.finished] == [b.tokens for b in whole.state.finished]


def test_the_k_v_cache_exports_and_loads_a_row(search: TorchSearch) -> None:
    cache = search.decoder.start(_encoder(12, rows=2), 16)
    with torch.inference_mode():
        search.decoder.forward(
            cache, torch.tensor([[SOT, NO_TIMESTAMPS, 7, 8], [SOT, NO_TIMESTAMPS, 9, 0]]), [4, 3]
        )
    data = cache.export(0, 4)
    assert len(data) == 4 * search.decoder.kv_bytes_per_token
    other = search.decoder.start(_encoder(12, rows=2), 16)
    other.load(1, data, 3, stored_length=4)
    assert other.lengths == [0, 3]
    assert other.export(1, 3) == cache.export(0, 3)
    with pytest.raises(ValueError, match="expected"):
        other.load(1, data[:-2], 4)


def test_a_decode_stops_where_ctranslate2_s_does() -> None:
    # Measured on CTranslate2's Whisper generate: at most min(max_length // 2, max_length - head + 1)
    # tokens after the head.
    assert SearchSettings(max_length=40).end_at(2) == 2 + 20
    assert SearchSettings(max_length=40).end_at(23) == 23 + 18
    assert SearchSettings(max_length=84).end_at(23) == 23 + 42


def test_the_window_fingerprint_names_the_audio_and_the_window() -> None:
    audio = np.zeros(1600, np.float32)
    assert window_fingerprint(audio, 128000) == window_fingerprint(audio.copy(), 128000)
    assert window_fingerprint(audio, 128000) != window_fingerprint(audio, 160000)
    louder = audio.copy()
    louder[5] = 0.1
    assert window_fingerprint(louder, 128000) != window_fingerprint(audio, 128000)
    assert window_fingerprint(audio[:800], 128000) != window_fingerprint(audio, 128000)


def test_a_draft_is_taken_from_past_the_forced_tokens() -> None:
    from voxwire_server.engines.torch_engine import _after

    assert _after((1, 2, 3, 4, 5), (1, 2)) == (3, 4, 5)
    assert _after((1, 2, 3), ()) == (1, 2, 3)
    # The committed words tokenized another way than the decoder had: after their last two tokens.
    assert _after((9, 8, 7, 2, 3, 4, 5), (1, 7, 2, 3)) == (4, 5)
    assert _after((9, 8, 7), (1, 2)) == ()


def test_hostile_rows_never_fail_the_batch_they_share(search: TorchSearch) -> None:
    encoded = _encoder(21, rows=2)
    (free_a,) = search.greedy(encoded[:1], [_row(21)], SETTINGS)
    (free_b,) = search.greedy(encoded[1:], [_row(22)], SETTINGS)
    tokens_b = free_b.sequences_ids[0]
    wrong_b = (*tokens_b[:2], (tokens_b[2] + 1) % 90, *tokens_b[3:])
    # Row a's draft is all right, so it ends at the cap in the first pass, while row b goes on
    # feeding draft chunks after its mismatch: a's padding must not run past the cap.
    together = search.greedy(
        encoded, [_row(21, draft=tuple(free_a.sequences_ids[0])), _row(22, draft=wrong_b)], SETTINGS
    )
    assert [t.sequences_ids for t in together] == [free_a.sequences_ids, free_b.sequences_ids]
    # More forced tokens than the cap leaves room for: the cap wins, for greedy and beam search.
    budget = SETTINGS.end_at(len(HEAD)) - len(HEAD)
    forced = tuple(range(10, 10 + budget + 5))
    (greedy,) = search.greedy(encoded[:1], [_row(21, forced=forced)], SETTINGS)
    assert greedy.sequences_ids[0] == list(forced[:budget])
    beam = SearchSettings(
        beam_size=3, max_length=SETTINGS.max_length, suppress_tokens=SETTINGS.suppress_tokens
    )
    (searched,) = search.beam_search(encoded[:1], [_row(21, forced=forced)], beam)
    assert searched.sequences_ids[0] == list(forced[:budget])
    # A stored search longer than the cap allows (a damaged or foreign state): decoded afresh.
    (stored,) = search.greedy(encoded[:1], [_row(21, keep_kv=True)], SETTINGS)
    kept = stored.state.finished[0]
    extra = 5
    longer = type(kept)(
        (*kept.tokens, *([7] * extra)),
        (*kept.logprobs, *([0.0] * extra)),
        True,
        kept.kv + bytes(extra * search.decoder.kv_bytes_per_token),
        (*kept.choices, *([7] * extra)),
    )
    state = type(stored.state)(**{**_fields(stored.state), "finished": (longer,)})
    (got,) = search.greedy(encoded[:1], [_row(21, state=state)], SETTINGS)
    assert got.reused == 0 and got.sequences_ids == free_a.sequences_ids
