"""``benchmarks/device_suite.sh --dry-run`` runs every row end to end (tiny models, CPU) and
writes its JSON and markdown table, so the accelerator run cannot rot while no GPU is at hand."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_device_suite_dry_run(tmp_path):
    pytest.importorskip("torch")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    env.pop("XLA_FLAGS", None)  # one CPU device, as on the GPU machine's host
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "device_suite.sh"), str(tmp_path), "--dry-run"],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "device_suite.json").read_text())
    assert result["dry_run"] is True
    rows = result["rows"]
    assert list(rows) == ["sd15-512-ddim50", "sd15-128-100", "inversion-128", "edm-heun35",
                          "preact18-train"]
    for name, r in rows.items():
        assert "error" not in r, (name, r)
        assert r["augdiff_img_per_s"] > 0
        if name != "edm-heun35" or os.environ.get("AUGDIFF_EDM_REPO"):
            assert r["peer_img_per_s"] > 0 and r["ratio"] > 0
    md = (tmp_path / "device_suite.md").read_text()
    assert "DRY RUN" in md and md.count("\n| ") >= 6


def test_device_suite_unknown_row(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import device_suite

    with pytest.raises(ValueError, match="unknown row"):
        device_suite.run_row(device_suite.Ctx(True, None), "nope")
