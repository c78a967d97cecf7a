"""Checkpoint integrity: a sha256 record of every saved file, verified on restore; a corrupt
newest step is named and the previous good one used; a full disk names the path and the free
space and leaves nothing partial; no absl "Metadata file does not exist" noise.

References are written here: checksums with ``hashlib`` over the files on disk, the corrupt
bytes flipped / truncated by hand, the free space from ``shutil.disk_usage``."""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import logging
import os
import re
import shutil

import numpy as np
import orbax.checkpoint as ocp
import pytest

from augdiff.train.checkpoint import Checkpointer, CheckpointError, restore_classifier_variables

LIKE = {"params": {"w": np.zeros((8, 4), np.float32)}, "batch_stats": {}}


def _state(step):
    return {"params": {"w": np.full((8, 4), float(step), np.float32)}, "batch_stats": {}}


@pytest.fixture
def two_steps(tmp_path):
    d = tmp_path / "checkpoints"
    with Checkpointer(d, max_to_keep=None) as ck:
        ck.save(1, _state(1), {"step": 1})
        ck.save(2, _state(2), {"step": 2})
    return d


def _data_file(step_dir):
    files = [f for f in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"),
                                  recursive=True) if os.path.getsize(f) >= 16]
    return sorted(files)[0]


def test_checksum_file_holds_sha256_of_every_saved_file(two_steps):
    step = two_steps / "2"
    record = json.loads((step / "augdiff_checksum.json").read_text())
    want = {}
    for root, _, files in os.walk(step):
        for name in files:
            if name in ("augdiff_checksum.json", "commit_success.txt"):
                continue
            p = os.path.join(root, name)
            want[os.path.relpath(p, step)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    assert record["algorithm"] == "sha256" and record["files"] == want
    assert "state/_METADATA" in want and any("/d/" in k for k in want)


def _flip3(path):
    raw = bytearray(open(path, "rb").read())
    for i in (3, len(raw) // 2, len(raw) - 2):
        raw[i] ^= 0x5A
    open(path, "wb").write(bytes(raw))


def _truncate(path):
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[: len(raw) // 2])


@pytest.mark.parametrize("damage, target", [
    (_flip3, "data"), (_truncate, "data"), (_truncate, "state/_METADATA"), (os.remove, "data"),
], ids=["3-bytes-flipped", "data-truncated", "metadata-truncated", "data-deleted"])
def test_corrupt_latest_falls_back_to_previous_step_naming_the_file(two_steps, damage, target,
                                                                     capsys):
    path = _data_file(two_steps / "2") if target == "data" else str(two_steps / "2" / target)
    damage(path)
    ck = Checkpointer(two_steps, max_to_keep=None)
    state, extras = ck.restore(None, like=LIKE)
    ck.close()
    np.testing.assert_array_equal(state["params"]["w"], np.full((8, 4), 1.0, np.float32))
    assert extras == {"step": 1}
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and path in err[0] and "falling back to step 1" in err[0]
    # moved aside: the next save of step 2 is a real save, and no second report follows
    assert sorted(os.listdir(two_steps)) == ["1", "2.corrupt"]
    with Checkpointer(two_steps, max_to_keep=None) as ck:
        assert ck.latest_step() == 1
        assert ck.save(2, _state(2), {"step": 2})
    with Checkpointer(two_steps, max_to_keep=None) as ck:
        assert ck.latest_step() == 2
    assert capsys.readouterr().err == ""


def test_explicit_step_that_is_corrupt_is_a_one_line_error(two_steps):
    _flip3(_data_file(two_steps / "1"))
    with Checkpointer(two_steps, max_to_keep=None) as ck:
        with pytest.raises(CheckpointError, match=re.escape(str(two_steps / "1"))):
            ck.restore(1, like=LIKE)


def test_no_valid_checkpoint_is_a_one_line_error_naming_the_folder(two_steps):
    _flip3(_data_file(two_steps / "1"))
    _truncate(str(two_steps / "2" / "state" / "_METADATA"))
    with Checkpointer(two_steps, max_to_keep=None) as ck:
        with pytest.raises(CheckpointError) as e:
            ck.latest_step()
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"no valid checkpoint in {two_steps}")
    assert sorted(os.listdir(two_steps)) == ["1", "2"]  # nothing moved when nothing is good


def test_checkpoint_of_an_older_augdiff_restores_with_a_warning(two_steps, capsys):
    os.remove(two_steps / "2" / "augdiff_checksum.json")
    with Checkpointer(two_steps, max_to_keep=None) as ck:
        state, _ = ck.restore(None, like=LIKE)
    assert float(state["params"]["w"][0, 0]) == 2.0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "warning" in err[0] and str(two_steps / "2") in err[0]


def test_classifier_variables_are_verified_too(two_steps):
    _flip3(_data_file(two_steps / "2"))
    with pytest.raises(CheckpointError, match=re.escape(str(two_steps / "2"))):
        restore_classifier_variables(str(two_steps), LIKE, step=2)


def test_disk_full_during_save_names_path_and_free_space_and_leaves_nothing(tmp_path,
                                                                            monkeypatch):
    d = tmp_path / "checkpoints"
    ck = Checkpointer(d, max_to_keep=None)
    ck.save(1, _state(1), {"step": 1})

    def full(self, *a, **k):  # the extras item hits ENOSPC after orbax made its tmp folder
        assert glob.glob(str(d / "2.orbax-checkpoint-tmp*"))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ocp.JsonCheckpointHandler, "async_save", full)
    with pytest.raises(CheckpointError) as e:
        ck.save(2, _state(2), {"step": 2})
    monkeypatch.undo()
    msg = str(e.value)
    assert "\n" not in msg and str(d / "2") in msg and "no space left" in msg
    free = float(re.search(r"\(([\d,.]+) MiB free", msg).group(1).replace(",", ""))
    assert abs(free - shutil.disk_usage(d).free / 2**20) < 64
    assert sorted(os.listdir(d)) == ["1"]  # no tmp folder, no partial step
    ck.close()
    with Checkpointer(d, max_to_keep=None) as ck:  # and the run resumes from step 1
        assert ck.latest_step() == 1 and ck.save(2, _state(2), {"step": 2})


def test_restores_log_no_missing_metadata_warning(two_steps, caplog):
    with caplog.at_level(logging.WARNING):
        restore_classifier_variables(str(two_steps), LIKE)
        with Checkpointer(two_steps, max_to_keep=None) as ck:
            ck.restore(None, like=LIKE)
            ck.restore_host(1)
    assert "Metadata file does not exist" not in caplog.text
