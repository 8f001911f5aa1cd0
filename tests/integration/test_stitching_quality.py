"""Acceptance of template stitching: intelligible through our own ASR, and no pitch jump at the
joint beyond what speech has between words (20 templates × 2 entity sets, real models)."""

from __future__ import annotations

from tests.conftest import RunningServer
from tests.tts_eval import TEMPLATES, evaluate_pitch, evaluate_wer
from voxwire import Client
from voxwire_server.engines.tts import HibariSynthesizer


def test_stitched_replies_are_as_intelligible_as_full_syntheses(server: RunningServer) -> None:
    with Client(server.target, timeout_s=60) as client:
        result = evaluate_wer(client)
    assert result.full_wer < 0.10, result
    assert result.stitched_wer <= result.full_wer + 0.01, result
    # Most replies were really stitched (the joint check may send a few to full synthesis).
    assert result.statuses.count("stitched") >= 0.8 * len(result.statuses)
    assert len(result.statuses) >= 2 * sum(len(e) for _, e in TEMPLATES)


def test_the_pitch_jump_at_a_joint_is_within_twice_the_natural_one(server: RunningServer) -> None:
    synthesizer = server.app.runtime.synthesizer
    assert isinstance(synthesizer, HibariSynthesizer)
    result = evaluate_pitch(synthesizer)
    assert len(result.joint_jumps_hz) >= 20
    assert result.joint_median_hz <= 2 * result.natural_median_hz, result
    assert result.joints_failing_check <= 0.2 * 2 * len(TEMPLATES)
