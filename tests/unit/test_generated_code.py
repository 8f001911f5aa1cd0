"""client/voxwire/v1 must be what `make proto` generates from protos/ today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen-proto.sh"), str(tmp_path)],
        check=True,
        env={"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"},
    )
    fresh = {p.name: p.read_bytes() for p in (tmp_path / "voxwire" / "v1").glob("*_pb2*")}
    committed = {p.name: p.read_bytes() for p in (ROOT / "client" / "voxwire" / "v1").glob("*_pb2*")}
    assert fresh.keys() == committed.keys()
    stale = sorted(name for name in fresh if fresh[name] != committed[name])
    assert not stale, f"run `make proto`: {stale} differ from protos/"
