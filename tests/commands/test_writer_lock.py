"""One writer per workdir: a second launch fails at once naming the holder; the OS frees the
lock when the holder dies; every writing command takes it before any work.

The holder is a real second process (a small Python snippet that takes the lock and sleeps);
the commands are called with their lock held and must fail before touching their inputs (the
configs below name nothing else: any work would fail differently)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest

from augdiff import cli
from augdiff.commands import evaluate, export, generate, run, sample, train, train_diffusion
from augdiff.data.store import StoreWriter
from augdiff.files import WorkdirLockedError, writer_lock

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOLDER = """
import sys, time
from augdiff.files import writer_lock
with writer_lock(sys.argv[1], "holder-cmd --x", process=(0, 1)), \\
        writer_lock(sys.argv[1] + "/store", "holder-cmd --x", process=(0, 1)), \\
        writer_lock(sys.argv[1], "holder-cmd --x", process=(0, 1), name=".out.export-lock"):
    print("ready", flush=True)
    time.sleep(600)
"""


def _start_holder(folder) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": REPO}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], env=env,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.fixture(scope="module")
def held(tmp_path_factory):
    """A workdir (and its ``store``) whose lock another live process holds."""
    wd = tmp_path_factory.mktemp("held")
    proc = _start_holder(wd)
    yield wd, proc.pid
    proc.kill()
    proc.wait()


def test_second_writer_fails_at_once_naming_holder_pid_and_command(held):
    wd, pid = held
    t0 = time.perf_counter()
    with pytest.raises(WorkdirLockedError) as e:
        with writer_lock(wd, process=(0, 1)):
            pytest.fail("took a lock another process holds")
    assert time.perf_counter() - t0 < 1.0  # non-blocking
    msg = str(e.value)
    assert "\n" not in msg and f"pid {pid}" in msg and "holder-cmd --x" in msg and str(wd) in msg
    # what the holder wrote into the lock file, read plainly
    info = json.loads(open(os.path.join(wd, ".augdiff.lock")).read())
    assert info["pid"] == pid and info["command"] == "holder-cmd --x" and info["started"]


def test_lock_is_released_when_the_holder_is_sigkilled(tmp_path):
    proc = _start_holder(tmp_path)
    with pytest.raises(WorkdirLockedError):
        with writer_lock(tmp_path, process=(0, 1)):
            pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with writer_lock(tmp_path, "me", process=(0, 1)):  # the stale file does not matter
        info = json.loads(open(os.path.join(tmp_path, ".augdiff.lock")).read())
        assert info["pid"] == os.getpid() and info["command"] == "me"
    with writer_lock(tmp_path, process=(0, 1)):  # released on exit from the body too
        pass


def test_multi_process_runs_take_one_lock_per_process_index(tmp_path):
    with writer_lock(tmp_path, process=(0, 2)):
        with writer_lock(tmp_path, process=(1, 2)):  # another index: its own file
            assert sorted(os.listdir(tmp_path)) == [".augdiff.lock.0", ".augdiff.lock.1"]
        with pytest.raises(WorkdirLockedError, match="in use"):
            with writer_lock(tmp_path, process=(0, 2)):  # same index: a second writer
                pass


def _config(wd, **extra):
    return ml_collections.ConfigDict({"workdir": str(wd), **extra})


@pytest.mark.parametrize("main, config", [
    (train.main, {}),
    (train_diffusion.main, {}),
    (generate.main, {"method": "diffusemix"}),
    (evaluate.main, {}),
    (run.main, {}),
    (sample.main, {"sample": {"store": ""}}),
], ids=["train", "train-diffusion", "generate", "evaluate", "run", "sample"])
def test_every_writing_command_takes_the_lock_first(held, main, config):
    wd, pid = held
    with pytest.raises(WorkdirLockedError, match=f"pid {pid}: holder-cmd"):
        main(_config(wd, **config))


def test_sample_locks_the_store_it_writes(held, tmp_path):
    wd, pid = held
    with pytest.raises(WorkdirLockedError, match=f"{wd}/store is in use .*pid {pid}"):
        sample.main(_config(tmp_path, sample={"store": str(wd / "store")}))


def test_export_locks_its_output_folder(held, tmp_path, capsys):
    """The lock of an export to ``<parent>/out`` is ``<parent>/.out.export-lock`` (beside
    ``out``, which must hold nothing but the export)."""
    wd, pid = held
    with StoreWriter(tmp_path / "store", method="toy", process_index=0) as w:
        w.add("k0", np.zeros((4, 4, 3), np.uint8), 0)
    assert export.main(["--store", str(tmp_path / "store"), "--out", str(wd / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"pid {pid}: holder-cmd" in err
    assert not (wd / "out").exists()


def test_cli_prints_the_lock_failure_as_one_line(held, capsys):
    wd, pid = held
    rc = cli.main(["augdiff", "train", "--config", "tests/fixtures/tiny_config.py:classify",
                   f"--config.workdir={wd}"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "\n" not in err
    assert err.startswith("augdiff train: WorkdirLockedError: ") and f"pid {pid}" in err


def test_a_forked_child_does_not_keep_the_lock_after_its_parent_dies(tmp_path):
    """A loader worker forked while the lock is held must not hold it once the holder is
    killed (the child sleeps on; the lock is free)."""
    snippet = """
import os, sys, time
from augdiff.files import writer_lock
with writer_lock(sys.argv[1], "parent", process=(0, 1)):
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # the fork hooks have run once the child runs its own code
        os.write(w, b"1")
        time.sleep(600)
        os._exit(0)
    os.read(r, 1)
    print(child, flush=True)
    time.sleep(600)
"""
    proc = subprocess.Popen([sys.executable, "-c", snippet, str(tmp_path)],
                            env={**os.environ, "PYTHONPATH": REPO}, stdout=subprocess.PIPE,
                            text=True)
    child = int(proc.stdout.readline())
    try:
        with pytest.raises(WorkdirLockedError, match=f"pid {proc.pid}: parent"):
            with writer_lock(tmp_path, process=(0, 1)):
                pass
        proc.kill()
        proc.wait()
        with writer_lock(tmp_path, process=(0, 1)):
            pass
    finally:
        os.kill(child, signal.SIGKILL)
