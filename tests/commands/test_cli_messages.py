"""One-line errors (no traceback) for an unknown config variant and a missing dataset."""

from __future__ import annotations

from augdiff.cli import main


def test_unknown_variant_is_one_line(repo_root, capsys):
    rc = main(["augdiff", "run", "--config", str(repo_root / "augdiff/configs/quickstart.py:nope")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "unknown variant 'nope'" in err


def test_missing_dataset_says_how_to_point_data_path(repo_root, tmp_path, capsys):
    rc = main(["augdiff", "run", "--config", str(repo_root / "augdiff/configs/quickstart.py"),
               f"--config.workdir={tmp_path / 'run'}",
               f"--config.data.path={tmp_path / 'no_such.zip'}", "--config.stages=prepare"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "does not exist" in err and "--config.data.path" in err
    # the TFDS route names both flags (data.path and data.tfds_name are exclusive)
    assert "--config.data.path= --config.data.tfds_name=" in err


def test_unprepared_tfds_dataset_is_one_line(repo_root, tmp_path, capsys, monkeypatch):
    """TFDS without TensorFlow reads prepared ArrayRecord files only; a dataset that is not
    prepared there is a one-line error naming the fix, not a KeyError traceback."""
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    rc = main(["augdiff", "run", "--config", str(repo_root / "augdiff/configs/quickstart.py"),
               f"--config.workdir={tmp_path / 'run'}", "--config.data.path=",
               "--config.data.tfds_name=cifar10", "--config.stages=prepare"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("WARNING:absl")]
    assert len(lines) == 1
    assert "not prepared in ArrayRecord format" in lines[0] and "--config.data.path" in lines[0]
