"""``augdiff compile`` end to end on the test configs (v5e:2x2, libtpu, no TPU): the table, the
resumable JSON rows, and one line per bad input or program that does not fit."""

from __future__ import annotations

import json
import sys

import pytest

from augdiff.aot import chips
from augdiff.commands import compile as compile_cmd

pytest.importorskip("libtpu", reason="the tpu test extra (libtpu) is not installed")
chips.ensure_libtpu_env()

QUICKSTART = "configs/quickstart.py:test"


def _table_rows(out: str) -> list[str]:
    return [line for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| program") and "---" not in line]


def test_table_and_resume(tmp_path, capsys):
    rows_file, md = tmp_path / "rows.jsonl", tmp_path / "table.md"
    argv = ["--config", QUICKSTART, "--topology", "v5e:2x2", "--only", "eval step",
            "--json", str(rows_file), "--md", str(md)]
    assert compile_cmd.main(argv) == 0
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    assert [r["program"] for r in rows] == ["preact_resnet_tiny eval step"]
    row = rows[0]
    assert row["compiled"] and row["fits"] and row["topology"] == "v5e:2x2"
    assert row["batch"] % 4 == 0 and row["hbm_gib"] > 0 and row["gflop_per_unit"] > 0
    assert len(_table_rows(out)) == 1 and "preact_resnet_tiny eval step" in md.read_text()
    # started again it measures nothing new: the row comes back from the file
    assert compile_cmd.main(argv) == 0
    out = capsys.readouterr().out
    assert len(rows_file.read_text().splitlines()) == 1
    assert len(_table_rows(out)) == 1


@pytest.mark.parametrize("topology", ["v7x:2x2", "v5e", "tpu:2x2", "v5e:2x2x2x2"])
def test_bad_topology_is_one_line(topology, capsys):
    assert compile_cmd.main(["--config", QUICKSTART, "--topology", topology]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and topology in err[0]


def test_topology_libtpu_refuses_is_one_line(capsys):
    # v5e:3x3 is well formed but not a slice libtpu can build
    assert compile_cmd.main(["--config", QUICKSTART, "--topology", "v5e:3x3"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "augdiff compile" in line]
    assert len(err) == 1 and "v5e:3x3" in err[0]


def test_missing_libtpu_is_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "libtpu", None)  # import libtpu raises ImportError
    assert compile_cmd.main(["--config", QUICKSTART, "--topology", "v5e:2x2"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "augdiff compile" in line]
    assert len(err) == 1 and "libtpu is not installed" in err[0]


def test_unknown_config_field_is_one_line(capsys):
    argv = ["--config", QUICKSTART, "--topology", "v5e:2x2", "--config.no_such_field=1"]
    assert compile_cmd.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no_such_field" in err[0]


def test_program_that_does_not_fit_is_one_line_with_its_bytes(tmp_path, capsys):
    # 4 million 16² images per call of the tiny classifier's eval: 3 GiB of uint8 pixels per
    # chip is fine, the train step's activations are not
    argv = ["--config", QUICKSTART, "--topology", "v5e:2x2", "--only", "preact_resnet_tiny train",
            "--batch", str(4 * 2**20), "--json", str(tmp_path / "rows.jsonl")]
    assert compile_cmd.main(argv) == 1
    err = [line for line in capsys.readouterr().err.splitlines()
           if line.startswith("augdiff compile: preact_resnet_tiny train step")]
    assert len(err) == 1, err
    assert "does not fit" in err[0] or "RESOURCE_EXHAUSTED" in err[0] or "memory" in err[0]
    row = json.loads((tmp_path / "rows.jsonl").read_text().splitlines()[0])
    if row["compiled"]:
        assert not row["fits"] and f"{row['hbm_gib'] * 2**30:,.0f}" in err[0]


def test_gpu_topology_names_and_one_line_errors(tmp_path, monkeypatch, capsys):
    assert chips.parse("h100:8") == ("h100", (1, 8))
    assert chips.parse("h200:2x8") == ("h200", (2, 8))
    # no target description: one line saying what is missing
    monkeypatch.delenv("AUGDIFF_GPU_TARGET_CONFIG", raising=False)
    assert compile_cmd.main(["--config", QUICKSTART, "--topology", "h100:8"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "augdiff compile" in line]
    assert len(err) == 1 and "target description" in err[0]
    # no CUDA plugin: one line naming the install
    target = tmp_path / "h100.pbtxt"
    target.write_text("gpu_device_info {\n  core_count: 132\n"
                      "  collective_memory_granularity: 1\n}\n")
    monkeypatch.setitem(sys.modules, "jax_plugins.xla_cuda12", None)
    argv = ["--config", QUICKSTART, "--topology", "h100:8", "--target-config", str(target)]
    assert compile_cmd.main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "augdiff compile" in line]
    assert len(err) == 1 and "CUDA plugin is not installed" in err[0]


def test_a_program_that_failed_is_compiled_again(tmp_path, capsys):
    rows_file = tmp_path / "rows.jsonl"
    failed = {"program": "preact_resnet_tiny eval step", "stage": "train_real",
              "topology": "v5e:2x2", "batch": 1000, "unit": "image", "compiled": False,
              "error": "NotImplementedError: planted", "compile_s": 1.0}
    rows_file.write_text(json.dumps(failed) + "\n")
    argv = ["--config", QUICKSTART, "--topology", "v5e:2x2", "--only", "eval step",
            "--json", str(rows_file)]
    assert compile_cmd.main(argv) == 0
    lines = [json.loads(line) for line in rows_file.read_text().splitlines()]
    assert [r["compiled"] for r in lines] == [False, True]
    assert "planted" not in capsys.readouterr().out
