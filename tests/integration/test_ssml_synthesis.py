"""SSML through a real server: each element changes the audio the way it should."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from tests.conftest import RunningServer
from tests.helpers import wer
from voxwire import AudioEncoding, CachePolicy, Client, RecognitionConfig

RATE_HZ = 16000
PCM = {"encoding": AudioEncoding.LINEAR16, "sample_rate_hz": RATE_HZ, "cache_policy": CachePolicy.BYPASS}


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[Client]:
    with Client(server.target, timeout_s=60) as c:
        yield c


def ssml(client: Client, body: str) -> bytes:
    return client.synthesize(ssml=f"<speak>{body}</speak>", **PCM).audio  # type: ignore[arg-type]


def text(client: Client, words: str) -> bytes:
    return client.synthesize(words, **PCM).audio  # type: ignore[arg-type]


def heard(client: Client, audio: bytes) -> str:
    return client.recognize(
        audio, RecognitionConfig(encoding=AudioEncoding.LINEAR16, sample_rate_hz=RATE_HZ)
    ).text


@pytest.mark.parametrize(
    ("markup", "spoken"),
    [
        (
            'Call <say-as interpret-as="telephone">555-1234</say-as>.',
            "Call five five five, one two three four.",
        ),
        (
            'It is <say-as interpret-as="cardinal">1,204</say-as> meters.',
            "It is one thousand two hundred four meters.",
        ),
        ('You came <say-as interpret-as="ordinal">21st</say-as>.', "You came twenty-first."),
        (
            'See you <say-as interpret-as="date" format="mdy">3/5/2024</say-as>.',
            "See you March fifth, twenty twenty-four.",
        ),
        (
            'The train leaves at <say-as interpret-as="time">14:30</say-as>.',
            "The train leaves at two thirty PM.",
        ),
        ('Your code is <say-as interpret-as="characters">XKCD</say-as>.', "Your code is X K C D."),
        ('Born in the <sub alias="United Kingdom">UK</sub>.', "Born in the United Kingdom."),
        ("<p><s>First sentence.</s><s>Second one.</s></p>", "First sentence. Second one."),
    ],
)
def test_say_as_and_sub_speak_exactly_the_expanded_words(client: Client, markup: str, spoken: str) -> None:
    # Same seeded synthesis of the same words: the samples are identical.
    expected = text(client, spoken)
    got = ssml(client, markup)
    if markup.startswith("<p>"):  # a paragraph ends with a pause after the same speech
        assert got[: len(expected)] == expected
        assert not np.frombuffer(got[len(expected) :], "<i2").any()
    else:
        assert got == expected


def test_break_adds_silence_of_its_length(client: Client) -> None:
    plain = ssml(client, "Wait for it. Now.")
    paused = ssml(client, 'Wait for it. <break time="1200ms"/> Now.')
    added_s = (len(paused) - len(plain)) / 2 / RATE_HZ
    assert abs(added_s - 1.2) < 0.03
    strong = ssml(client, 'Wait for it. <break strength="x-strong"/> Now.')
    assert abs((len(strong) - len(plain)) / 2 / RATE_HZ - 1.0) < 0.03


def test_prosody_rate_changes_the_pace(client: Client) -> None:
    words = "Please speak this part of the sentence at a different pace."
    slow = len(ssml(client, f'<prosody rate="x-slow">{words}</prosody>'))
    normal = len(ssml(client, words))
    fast = len(ssml(client, f'<prosody rate="150%">{words}</prosody>'))
    assert slow > 1.3 * normal > 1.3 * 1.3 * fast


def test_phoneme_overrides_the_pronunciation(client: Client) -> None:
    audio = ssml(client, 'I like <phoneme alphabet="ipa" ph="təˈmeɪtoʊ">tomato</phoneme> soup.')
    assert wer([("I like tomato soup.", heard(client, audio))]) <= 0.25
    custom = ssml(client, 'I like <phoneme alphabet="x-hibari" ph="pəlˈAʤ">tomato</phoneme> soup.')
    assert custom != audio
    assert "tomato" not in heard(client, custom).lower()
