"""Helpers for tests that start augdiff in other processes: launches, kills, tiny data.

- :func:`launch` runs one ``augdiff`` command as 1 plain process or as N JAX processes on
  localhost through ``launch/local_cpu.sh`` (a free coordinator port, per-process logs, a
  time limit that kills the whole process group, the logs printed on failure).
- :func:`run_and_kill` starts a command, waits until a predicate over its files holds (a
  checkpoint or a store shard appeared), waits a seeded random extra delay and SIGKILLs the
  whole process group: a crash at a random point, reproducible from the seed.
- :func:`tiny_image_folder` cuts a small ``root/<split>/<class>/*.jpg`` tree out of the
  CIFAR-10 zip (the per-epoch evaluation of a whole test split stays cheap).
"""

from __future__ import annotations

import os
import pathlib
import random
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "augdiff.cli"]


def free_port() -> int:
    """A TCP port nobody listens on right now (for the JAX coordinator)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env(devices: int | None = None, **extra: str) -> dict[str, str]:
    """The test environment for a child: CPU, quiet libraries, the shared compile cache."""
    env = dict(os.environ)
    for k in ("AUGDIFF_COORDINATOR", "AUGDIFF_NUM_PROCESSES", "AUGDIFF_PROCESS_ID",
              "AUGDIFF_DISTRIBUTED", "PYTEST_CURRENT_TEST"):
        env.pop(k, None)
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", DIFFUSERS_VERBOSITY="error",
               TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.setdefault("AUGDIFF_JAX_CACHE", str(REPO / ".jax_cache"))
    if devices is not None:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env.update(extra)
    return env


def run(cmd: Sequence[str], *, env: dict[str, str], log: os.PathLike,
        timeout: float = 300) -> str:
    """Run ``cmd`` to completion in a new session; its output (stdout + stderr) on success,
    :class:`LaunchError` with the log tail on a non-zero exit or a timeout."""
    with open(log, "wb") as f:
        proc = subprocess.Popen(list(cmd), cwd=REPO, env=env, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
        rc = _wait(proc, timeout)
    text = _tail(pathlib.Path(log), 10**7)
    if rc != 0:
        what = "timed out" if rc is None else f"exited with {rc}"
        raise LaunchError(f"{' '.join(map(str, cmd))} {what}\n{text[-4000:]}")
    return text


def _tail(path: pathlib.Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError as e:
        return f"<no log: {e}>"


class LaunchError(AssertionError):
    """A launched command failed or timed out; the message holds every process's log tail."""


def launch(
    args: Sequence[str],
    *,
    processes: int,
    devices_per_process: int,
    logdir: os.PathLike,
    timeout: float = 300,
    env: dict[str, str] | None = None,
) -> list[str]:
    """Run ``augdiff <args>``; returns every process's log. ``processes == 1`` is a plain run
    (no ``jax.distributed``); more go through ``launch/local_cpu.sh``. Raises
    :class:`LaunchError` with the logs on a non-zero exit or a timeout."""
    logdir = pathlib.Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    env = dict(env or base_env())
    if processes == 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices_per_process}"
        log = logdir / "process_0.log"
        cmd = [*CLI, *args]
        with open(log, "wb") as f:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            rc = _wait(proc, timeout)
        logs = [log]
    else:
        env.update(AUGDIFF_PORT=str(free_port()), AUGDIFF_LOG_DIR=str(logdir))
        cmd = ["bash", str(REPO / "launch/local_cpu.sh"), str(processes),
               str(devices_per_process), "--", *CLI, *args]
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        rc = _wait(proc, timeout)
        logs = [logdir / f"process_{i}.log" for i in range(processes)]
    texts = [_tail(p, 10**7) for p in logs]
    if rc != 0:
        what = "timed out" if rc is None else f"exited with {rc}"
        detail = "\n".join(f"--- {p.name} ---\n{t[-4000:]}" for p, t in zip(logs, texts,
                                                                             strict=True))
        raise LaunchError(f"{' '.join(map(str, cmd))} {what} ({processes} processes)\n{detail}")
    return texts


def _wait(proc: subprocess.Popen, timeout: float) -> int | None:
    """Wait for ``proc``; on timeout SIGKILL its whole process group and return None."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        return None


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group ``proc`` leads (it was started with a new session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_and_kill(
    cmd: Sequence[str],
    *,
    ready: Callable[[], bool],
    seed: int,
    max_delay: float,
    log: os.PathLike,
    env: dict[str, str],
    timeout: float = 300,
) -> float:
    """Start ``cmd`` (e.g. ``[*CLI, "train", ...]``), wait until ``ready()`` holds, then a delay
    drawn uniformly in ``[0, max_delay)`` from ``seed``, then SIGKILL its process group. Returns
    the delay. Fails (with the log) if the command ends by itself before it could be killed:
    the kill point was not reached."""
    delay = random.Random(seed).uniform(0.0, max_delay)
    name = " ".join(map(str, cmd[:4]))
    with open(log, "wb") as f:
        proc = subprocess.Popen(list(cmd), cwd=REPO, env=env, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
        t0 = time.monotonic()
        try:
            while not ready():
                if proc.poll() is not None:
                    raise LaunchError(f"{name} ended (rc {proc.returncode}) before the "
                                      f"kill point\n{_tail(pathlib.Path(log))}")
                if time.monotonic() - t0 > timeout:
                    raise LaunchError(f"{name}: kill point not reached in {timeout} s"
                                      f"\n{_tail(pathlib.Path(log))}")
                time.sleep(0.05)
            end = time.monotonic() + delay
            while time.monotonic() < end and proc.poll() is None:
                time.sleep(0.01)
        finally:
            if proc.poll() is None:
                kill_group(proc)
    assert proc.returncode == -signal.SIGKILL, (
        f"{name} finished (rc {proc.returncode}) before the SIGKILL after "
        f"{delay:.2f} s\n{_tail(pathlib.Path(log))}"
    )
    return delay


def tiny_image_folder(cifar_zip: os.PathLike, root: os.PathLike, *,
                      classes: Sequence[str], per_split: dict[str, int]) -> pathlib.Path:
    """``root/cifar10/<split>/<class>/<file>.jpg`` with the first ``per_split[split]`` images
    of each class, copied byte for byte from the CIFAR-10 zip."""
    root = pathlib.Path(root)
    with zipfile.ZipFile(cifar_zip) as z:
        names = sorted(n for n in z.namelist() if n.lower().endswith(".jpg"))
        for split, n in per_split.items():
            for cls in classes:
                prefix = f"cifar10/{split}/{cls}/"
                picked = [m for m in names if m.startswith(prefix)][:n]
                if len(picked) < n:
                    raise ValueError(f"{cifar_zip}: only {len(picked)} images under {prefix}")
                out = root / split / cls
                out.mkdir(parents=True, exist_ok=True)
                for m in picked:
                    (out / os.path.basename(m)).write_bytes(z.read(m))
    return root


def checkpoint_steps(directory: os.PathLike) -> list[int]:
    """Finalised orbax checkpoint steps (numeric directory names) under ``directory``."""
    try:
        return sorted(int(n) for n in os.listdir(directory) if n.isdigit())
    except FileNotFoundError:
        return []


def store_shards(directory: os.PathLike) -> list[str]:
    """Complete store shards (renamed into place) under ``directory``."""
    try:
        return sorted(n for n in os.listdir(directory)
                      if n.startswith("shard-") and n.endswith(".array_record"))
    except FileNotFoundError:
        return []
