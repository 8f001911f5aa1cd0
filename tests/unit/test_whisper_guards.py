"""The window decoder's text guards and previous-text context, without the model."""

from __future__ import annotations

from typing import Any

import numpy as np

from voxwire_server.domain import Alternative, DecodeOptions, Tier
from voxwire_server.engines.base import WindowRequest, WindowResult
from voxwire_server.engines.whisper import (
    LOOP_REPETITION_PENALTY,
    REPETITION_PENALTY,
    WhisperRecognizer,
    _looped,
    _may_echo,
    _words,
)

SOT_PREV = 50360


class _Tokenizer:
    sot_prev = SOT_PREV


class _Model:
    """One token per word: lengths are easy to count."""

    max_length = 448

    def text_tokens(self, language: str, text: str) -> list[int]:
        return [len(w) for w in text.split()]

    def tokenizer(self, language: str) -> tuple[Any, list[int]]:
        return _Tokenizer(), []


def _recognizer(context_tokens: int) -> WhisperRecognizer:
    # Only the context logic is exercised: no model is loaded.
    recognizer = WhisperRecognizer.__new__(WhisperRecognizer)
    recognizer._context_limit = context_tokens
    return recognizer


def _context(recognizer: WhisperRecognizer, words: int, **options: Any) -> list[int]:
    request = WindowRequest(
        np.zeros(16000, np.float32), DecodeOptions(**options), context=" ".join(["w"] * words)
    )
    return recognizer._context_tokens(_Model(), request)  # type: ignore[arg-type]


def test_an_echo_into_the_padding_is_suspected() -> None:
    assert _may_echo(
        "And it is worth mention in passing that as an example of fine typography, a fine typography"
    )
    assert _may_echo("turn on the lights turn on the lights")
    assert not _may_echo("And it is worth mention in passing that as an example of fine typography.")
    assert not _may_echo("yes yes")


def test_a_loop_is_a_rejected_repetition_or_a_repeated_run_of_four_words() -> None:
    assert _looped(WindowResult((), rejected="repetition"))
    assert _looped(WindowResult((Alternative("I will go there and I will go there and I will go", 0.5),)))
    assert not _looped(WindowResult((Alternative("I will go there and then I will go home", 0.9),)))
    assert not _looped(WindowResult((), rejected="no_speech"))


def test_a_short_unit_five_times_in_a_row_is_a_loop() -> None:
    def looped(text: str) -> bool:
        return _looped(WindowResult((Alternative(text, 0.9),)))

    assert looped("2. Committed by the Bankruptcy Commissioner, 1.4.1.1.1.1.1.1.1.1.1.1.1.1.1.")
    assert looped("the the the the the the")
    # Speech repeats single characters and a few words: "1000000", "Wait.....", "No, no, no."
    for text in ["1000000 dollars", "Wait.....", "No, no, no.", "Call 555-1234.", "hello... there"]:
        assert not looped(text), text


def _scripted(answers: dict[tuple[float, str], str]) -> tuple[WhisperRecognizer, list[tuple[float, str]]]:
    """A recognizer whose windows decode to ``answers[(repetition penalty, context)]``."""
    recognizer = WhisperRecognizer.__new__(WhisperRecognizer)
    calls: list[tuple[float, str]] = []

    def decode(requests: list[WindowRequest], penalty: float | None = None) -> list[WindowResult]:
        key = (penalty or REPETITION_PENALTY[requests[0].options.tier], requests[0].context)
        calls.append(key)
        return [WindowResult((Alternative(answers[key], 0.9),)) for _ in requests]

    recognizer._decode_speech = decode  # type: ignore[method-assign]
    return recognizer, calls


def test_a_window_that_loops_is_decoded_again_with_a_repetition_penalty_then_without_context() -> None:
    audio = np.zeros(16000, np.float32)  # answers of 2+ words a second are not doubtful: no speech check
    request = WindowRequest(audio, DecodeOptions(), context="before")
    loop = "one two three four one two three four"
    plain = REPETITION_PENALTY[Tier.FAST]
    assert plain < LOOP_REPETITION_PENALTY
    recognizer, calls = _scripted(
        {(plain, "before"): loop, (LOOP_REPETITION_PENALTY, "before"): "fixed it now"}
    )
    (result,) = recognizer._decode_windows([request])
    assert result.alternatives[0].text == "fixed it now"
    assert calls == [(plain, "before"), (LOOP_REPETITION_PENALTY, "before")]
    answers = {(plain, "before"): loop, (LOOP_REPETITION_PENALTY, "before"): loop}
    recognizer, calls = _scripted({**answers, (LOOP_REPETITION_PENALTY, ""): "without the context"})
    assert recognizer._decode_windows([request])[0].alternatives[0].text == "without the context"
    # Nothing better: the first answer stays (its words are not thrown away).
    recognizer, calls = _scripted({**answers, (LOOP_REPETITION_PENALTY, ""): loop})
    assert recognizer._decode_windows([request])[0].alternatives[0].text == loop
    assert len(calls) == 3
    # An answer that does not loop is decoded once.
    recognizer, calls = _scripted({(plain, "before"): "fine words here"})
    assert recognizer._decode_windows([request])[0].alternatives[0].text == "fine words here"
    assert calls == [(plain, "before")]


def test_previous_text_is_cut_to_a_few_lengths_so_streams_share_batches() -> None:
    recognizer = _recognizer(64)
    assert _context(recognizer, 0) == []
    # Short histories are kept whole; longer ones are cut to the largest length that fits.
    assert len(_context(recognizer, 5)) == 1 + 5
    assert len(_context(recognizer, 20)) == 1 + 16
    assert len(_context(recognizer, 63)) == 1 + 32
    assert len(_context(recognizer, 500)) == 1 + 64
    assert _context(recognizer, 5)[0] == SOT_PREV


def test_hotwords_come_first_and_the_history_fills_the_rest() -> None:
    recognizer = _recognizer(64)
    tokens = _context(recognizer, 40, hotwords=("Whittemore",), prompt="a b c")
    assert tokens[:5] == [SOT_PREV, len("Whittemore"), 1, 1, 1]
    assert len(tokens) == 1 + 4 + 32


def test_no_history_when_context_is_off() -> None:
    assert _context(_recognizer(0), 40) == []
    assert len(_context(_recognizer(0), 40, prompt="hello there")) == 3


def test_aligned_words_are_the_transcript_s_words() -> None:
    def piece(word: str, start: float, end: float, p: float) -> dict[str, Any]:
        return {"word": word, "start": start, "end": end, "probability": p}

    aligned = [
        piece(" the", 0.0, 0.2, 0.9),
        piece(" 42", 0.2, 0.5, 0.8),
        piece("-line", 0.5, 0.9, 0.4),
        piece(" bible", 0.9, 1.4, 0.7),
        piece(".", 1.4, 1.4, 0.2),
        piece(" i", 1.5, 1.6, 0.9),
        piece(".e", 1.6, 2.5, 0.6),
    ]
    words = _words(aligned, audio_s=2.0)
    assert [w.text for w in words] == ["the", "42-line", "bible.", "i.e"]
    assert [w.probability for w in words] == [0.9, 0.4, 0.7, 0.6]
    assert (words[1].start_s, words[1].end_s) == (0.2, 0.9)
    assert words[3].end_s == 2.0  # kept inside the audio
