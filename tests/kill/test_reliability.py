"""Reliability across stages: SIGKILL at random points then restart, and bad inputs.

Kill/restart matrix (each stage runs as a real ``augdiff`` subprocess, or a writer process for
the store; the kill point is "the k-th checkpoint / shard appeared" plus a delay drawn from a
seeded RNG, so it lands anywhere: mid-step, mid-save, between a shard and its index; the same
seed gives the same plan):

==========================  ======================================  =======================
stage                       kill point                              restart must give
==========================  ======================================  =======================
classifier training         k-th orbax checkpoint + U[0, 0.5 s)     the uninterrupted
                                                                    ``metrics.json``, exactly
EDM training                2nd checkpoint + U[0, 0.4 s)           bit-identical params,
                                                                    EMA, Adam state
EDM sampling into a store   k-th store shard + U[0, 0.5 s)          every key once, same bytes
store writing               three kills, each k-th shard + U[0, .3) every key once, same bytes
==========================  ======================================  =======================

Bad inputs, each error must name the problem: unknown config key, wrong type, a corrupt image
and an empty class at the ``augdiff train`` stage, a missing SD weights directory / component,
an unCLIP model without its image conditioning, a non-finite classifier loss, disk full while
the sampling stage writes a shard. Covered elsewhere and not repeated here: corrupt image and
empty class at the source level (``test_sources.py``), disk full in ``StoreWriter`` itself
(``test_store.py``), a non-finite EDM loss (``test_edm_train.py``).
"""

from __future__ import annotations

import errno
import json
import os
import random
import sys

import numpy as np
import pytest
from _mp_helpers import (
    CLI,
    REPO,
    base_env,
    checkpoint_steps,
    run,
    run_and_kill,
    store_shards,
    tiny_image_folder,
)

TINY = "tests/fixtures/tiny_config.py"
CLASSES = ["airplane", "cat", "ship", "truck"]
SEED = 8  # the kill plan: which checkpoint/shard, and the extra delay


@pytest.fixture(scope="module")
def env():
    return base_env(devices=2)


@pytest.fixture(scope="module")
def tiny_folder(cifar_zip, tmp_path_factory):
    return tiny_image_folder(cifar_zip, tmp_path_factory.mktemp("cifar_tiny"), classes=CLASSES,
                             per_split={"train": 8, "test": 4})


def _kill_then_restart(args, *, workdir, ready, seed, max_delay, env):
    """Run ``augdiff <args>`` until SIGKILLed at the planned point, then run it to the end."""
    delay = run_and_kill([*CLI, *args], ready=ready, seed=seed, max_delay=max_delay,
                         log=workdir / "killed.log", env=env)
    out = run([*CLI, *args], env=env, log=workdir / "resumed.log")
    return delay, out


# --------------------------------------------------------------------------- classifier


@pytest.mark.slow
def test_classifier_training_killed_and_restarted_equals_uninterrupted(tiny_folder, env,
                                                                       tmp_path):
    common = ["train", "--config", f"{TINY}:classify", f"--config.data.path={tiny_folder}"]
    full = tmp_path / "full"
    run([*CLI, *common, f"--config.workdir={full}"], env=env, log=tmp_path / "full.log")
    killed = tmp_path / "killed"
    k = random.Random(SEED).randint(1, 5)  # of 8 steps, a checkpoint after each
    ckpts = killed / "checkpoints"
    _kill_then_restart([*common, f"--config.workdir={killed}"], workdir=tmp_path,
                       ready=lambda: max(checkpoint_steps(ckpts), default=0) >= k,
                       seed=SEED, max_delay=0.5, env=env)
    ref = json.loads((full / "metrics.json").read_text())
    got = json.loads((killed / "metrics.json").read_text())
    resumed = json.loads((killed / "run.json").read_text())["resumed_from_step"]
    assert k <= resumed < 8, f"the restart did not resume (from step {resumed}, killed after {k})"
    # nothing lost, nothing duplicated: one row per epoch, the same values bit for bit
    assert [e["epoch"] for e in got["epochs"]] == [1, 2]
    assert got == ref
    assert checkpoint_steps(ckpts)[-1] == 8


# --------------------------------------------------------------------------- EDM


@pytest.fixture(scope="module")
def edm_full(cifar_zip, env, tmp_path_factory):
    """An uninterrupted tiny EDM training run (6 steps, checkpoints at 2, 4, 6)."""
    workdir = tmp_path_factory.mktemp("edm_full")
    common = ["--config", f"{TINY}:edm", f"--config.data.path={cifar_zip}"]
    run([*CLI, "train-diffusion", *common, f"--config.workdir={workdir}"], env=env,
        log=workdir / "train.log")
    return workdir, common


@pytest.fixture(scope="module")
def edm_killed(edm_full, env, tmp_path_factory):
    """The same run SIGKILLed after a seeded checkpoint, then restarted."""
    _, common = edm_full
    workdir = tmp_path_factory.mktemp("edm_killed")
    k = 2  # of checkpoints 2, 4, 6: the seeded delay places the kill within steps 3-6
    ckpts = workdir / "checkpoints"
    _kill_then_restart(["train-diffusion", *common, f"--config.workdir={workdir}"],
                       workdir=workdir, ready=lambda: k in checkpoint_steps(ckpts), seed=SEED,
                       max_delay=0.4, env=env)
    return workdir, k


def _restore_edm(workdir, common):
    import jax

    from augdiff.config import load_config
    from augdiff.edm import sampling
    from augdiff.edm import train as edm_train

    config = load_config(common[1], [o[len("--config."):] for o in common[2:]]
                         + [f"workdir={workdir}"])
    ck = edm_train.checkpointer(config)
    step = ck.latest_step()
    n = int(sampling.checkpoint_extras(ck, step)["num_classes"])
    model = edm_train.build_model(config, num_classes=n)
    cfg = edm_train.StepConfig.from_config(config, num_classes=n)
    like = jax.eval_shape(lambda key: edm_train.init_state(
        key, model, edm_train.make_optimizer(config), (1, 8, 8, 3), cfg), jax.random.PRNGKey(0))
    state, _, _ = edm_train.restore_checkpoint(ck, like, step)
    ck.close()
    return step, state


def _metrics(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_edm_training_killed_and_restarted_equals_uninterrupted(edm_full, edm_killed):
    import jax

    (full, common), (killed, _) = edm_full, edm_killed
    s_full, st_full = _restore_edm(full, common)
    s_kill, st_kill = _restore_edm(killed, common)
    assert s_full == s_kill == 6
    leaves = jax.tree_util.tree_leaves
    for a, b in zip(leaves((st_full.params, st_full.ema, st_full.opt_state)),
                    leaves((st_kill.params, st_kill.ema, st_kill.opt_state)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # every step's loss was logged, and the last record of each step is the uninterrupted one
    ref = {r["step"]: r["loss"] for r in _metrics(full)}
    got = {r["step"]: r["loss"] for r in _metrics(killed)}
    assert sorted(got) == sorted(ref) == list(range(1, 7)) and got == ref


@pytest.mark.slow
def test_edm_training_restart_logs_each_step_once(edm_killed):
    killed, _ = edm_killed
    steps = [r["step"] for r in _metrics(killed)]
    assert steps == list(range(1, 7)), f"steps logged after a kill/restart: {steps}"


def _store_contents(root):
    """(keys read from every complete shard's records, duplicates kept; images by key).

    The records themselves are read, not the ``.idx.json`` sidecars: a kill between a shard's
    rename and its sidecar's leaves a complete shard without one."""
    from array_record.python.array_record_module import ArrayRecordReader

    from augdiff.data.store import SyntheticStore, decode_header

    keys = []
    for name in store_shards(root):
        reader = ArrayRecordReader(str(root / name))
        keys += [decode_header(r)["key"] for r in reader.read_all()]
        reader.close()
    store = SyntheticStore(root)
    return keys, {store.provenance(i)["key"]: store[i]["image"] for i in range(len(store))}


@pytest.mark.slow
def test_edm_sampling_killed_and_restarted_writes_every_key_once(edm_full, env, tmp_path):
    workdir, common = edm_full
    args = ["sample", *common, f"--config.workdir={workdir}", "--config.num_samples=12",
            "--config.sample.batch_size=2", "--config.sample.shard_size=2"]
    ref_store, store = tmp_path / "ref", tmp_path / "killed"
    run([*CLI, *args, f"--config.sample.store={ref_store}"], env=env, log=tmp_path / "ref.log")
    k = random.Random(SEED).randint(1, 5)  # of 6 shards
    _, out = _kill_then_restart([*args, f"--config.sample.store={store}"], workdir=tmp_path,
                                ready=lambda: len(store_shards(store)) >= k, seed=SEED,
                                max_delay=0.5, env=env)
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["skipped"] >= 2 * k and summary["skipped"] + summary["written"] == 12
    keys, images = _store_contents(store)
    ref_keys, ref_images = _store_contents(ref_store)
    assert sorted(keys) == sorted(ref_keys) == [f"{i:08d}" for i in range(12)]
    for key in ref_images:
        np.testing.assert_array_equal(images[key], ref_images[key], err_msg=key)
    assert not [n for n in os.listdir(store) if ".tmp-" in n]


# --------------------------------------------------------------------------- store writing

_WRITER = """
import sys, time
import numpy as np
from augdiff.data.store import StoreWriter
root, n = sys.argv[1], int(sys.argv[2])
with StoreWriter(root, method="test/reliability", process_index=0, shard_size=3) as w:
    for i in range(n):
        key = f"{i:05d}"
        if key in w.completed_keys:
            continue
        rng = np.random.default_rng([7, i])  # example i's bytes depend on i only
        w.add(key, rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), i % 4,
              provenance={"example": i})
        time.sleep(0.01)
"""


def test_store_writing_killed_three_times_loses_and_duplicates_nothing(tmp_path):
    env = base_env()
    n = 60  # 20 shards of 3
    writer = [sys.executable, "-c", _WRITER]
    ref, root = tmp_path / "ref", tmp_path / "killed"
    run([*writer, str(ref), str(n)], env=env, log=tmp_path / "ref.log")
    plan = random.Random(SEED)
    target = 0
    for kill in range(3):
        target += plan.randint(2, 5)
        run_and_kill([*writer, str(root), str(n)], ready=lambda t=target: len(
            store_shards(root)) >= t, seed=SEED + kill, max_delay=0.3,
            log=tmp_path / f"kill{kill}.log", env=env)
    assert len(store_shards(root)) < n // 3, "the kills came too late to interrupt the writer"
    run([*writer, str(root), str(n)], env=env, log=tmp_path / "final.log")
    keys, images = _store_contents(root)
    ref_keys, ref_images = _store_contents(ref)
    assert sorted(keys) == sorted(ref_keys) == [f"{i:05d}" for i in range(n)]
    for key in ref_images:
        np.testing.assert_array_equal(images[key], ref_images[key], err_msg=key)
    assert not [p for p in os.listdir(root) if ".tmp-" in p], "unfinished shard left behind"


# --------------------------------------------------------------------------- bad inputs


def test_unknown_config_key_and_wrong_type_are_named(capsys):
    from augdiff import cli
    from augdiff.config import ConfigError, load_config

    spec = str(REPO / f"{TINY}:classify")
    with pytest.raises(ConfigError, match=r"optim\.lrr"):
        load_config(spec, ["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"batch_size.*abc|abc.*batch_size"):
        load_config(spec, ["batch_size=abc"])
    with pytest.raises(ConfigError, match=r"data\.image_size"):
        load_config(spec, ["data.image_size=3.5"])
    # the CLI reports the same thing and exits 2 without running the stage
    assert cli.main(["augdiff", "train", "--config", spec, "--config.optim.lrr=0.1"]) == 2
    err = capsys.readouterr().err
    assert "config error" in err and "optim.lrr" in err


def _train_config(path, workdir, **overrides):
    from augdiff.config import load_config

    over = [f"data.path={path}", f"workdir={workdir}"] + [f"{k}={v}" for k, v in
                                                         overrides.items()]
    return load_config(str(REPO / f"{TINY}:classify"), over)


def test_train_stage_names_corrupt_image_and_empty_class(tiny_folder, tmp_path, capsys):
    import shutil

    from augdiff.commands import train as train_cmd

    bad = tmp_path / "data"
    shutil.copytree(tiny_folder, bad)
    victim = sorted((bad / "train" / "cat").iterdir())[3]
    victim.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    # a tiny step count: the corrupt file is read in the first epoch
    cfg = _train_config(bad, tmp_path / "w1", epochs=1, steps_per_epoch=4)
    assert train_cmd.main(cfg) == 1
    err = capsys.readouterr().err
    # the pre-scan names it before anything compiles, with the flag that skips it
    assert "unreadable image" in err and victim.name in err and "cat" in err
    assert "data.skip_corrupt=True" in err
    # skip_corrupt=True trains through it
    shutil.rmtree(bad / "train" / "ship")
    (bad / "train" / "ship").mkdir()
    cfg = _train_config(bad, tmp_path / "w2")
    assert train_cmd.main(cfg) == 1
    err = capsys.readouterr().err
    assert "empty class" in err and "ship" in err


@pytest.mark.slow
def test_classifier_non_finite_loss_names_step_and_checkpoint(tiny_folder, tmp_path):
    from augdiff.train.classifier import NonFiniteLossError, train_and_evaluate

    cfg = _train_config(tiny_folder, tmp_path, **{"optim.lr": "nan"})
    with pytest.raises(NonFiniteLossError) as err:
        train_and_evaluate(cfg)
    msg = str(err.value)
    # step 1 computes its loss before the NaN update; step 2 sees NaN parameters
    assert "non-finite training loss nan at step 2" in msg
    assert f"checkpoint step 1 in {tmp_path / 'checkpoints'}" in msg
    assert not (tmp_path / "metrics.json").exists()


@pytest.fixture(scope="module")
def tiny_unclip(tmp_path_factory):
    """A tiny random-weight unCLIP model folder (its UNet has the image conditioning)."""
    from augdiff.sd import tiny

    path = tmp_path_factory.mktemp("tiny_sd") / "unclip"
    return tiny.make_tiny_sd(str(path), kind="unclip", formats=("flax",))


@pytest.mark.slow
def test_missing_sd_weights_directory_is_named(tiny_unclip, tmp_path):
    import shutil

    from augdiff.sd.loading import ModelLoadError, load_sd

    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError, match="no-such-model.*neither a local directory"):
        load_sd(str(missing))
    broken = tmp_path / "broken"
    shutil.copytree(tiny_unclip, broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(ModelLoadError, match=r"component 'unet'.*broken/unet"):
        load_sd(str(broken))
    shutil.copytree(tiny_unclip, tmp_path / "noweights")
    for f in (tmp_path / "noweights" / "vae").iterdir():
        if f.name != "config.json":
            f.unlink()
    with pytest.raises(ModelLoadError, match=r"component 'vae': no weights"):
        load_sd(str(tmp_path / "noweights"))


@pytest.mark.slow
def test_unclip_model_without_image_conditioning_is_refused(tiny_unclip, tmp_path):
    import shutil

    from augdiff.sd.loading import ModelLoadError, load_sd

    bad = tmp_path / "unclip"
    shutil.copytree(tiny_unclip, bad)
    cfg_path = bad / "unet" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    assert cfg.pop("class_embed_type") == "projection"
    cfg_path.write_text(json.dumps(cfg))
    # diffusers' Flax UNet alone would load this silently without the image embedding
    with pytest.raises(ModelLoadError, match="without its image conditioning"):
        load_sd(str(bad))


@pytest.mark.slow
def test_disk_full_while_sampling_names_the_shard_then_resumes(edm_full, tmp_path, monkeypatch):
    from array_record.python import array_record_module

    from augdiff.config import load_config
    from augdiff.data import store as store_lib
    from augdiff.data.store import StoreWriteError
    from augdiff.edm.sampling import sample_to_store

    workdir, common = edm_full
    over = [o[len("--config."):] for o in common[2:]] + [
        f"workdir={workdir}", f"sample.store={tmp_path / 'store'}", "num_samples=6",
        "sample.batch_size=8"]
    config = load_config(common[1], over)

    class FullDisk:
        def __init__(self, path, options):
            self.path = path

        def write(self, record):
            raise OSError(errno.ENOSPC, "No space left on device", self.path)

        def close(self):
            pass

    monkeypatch.setattr(store_lib, "ArrayRecordWriter", FullDisk)
    with pytest.raises(StoreWriteError, match=r"shard-p00000-000000\.array_record.*No space"):
        sample_to_store(config)
    assert not store_shards(tmp_path / "store"), "a shard was committed on a full disk"
    monkeypatch.setattr(store_lib, "ArrayRecordWriter", array_record_module.ArrayRecordWriter)
    out = sample_to_store(config)
    assert out["written"] == 6 and out["skipped"] == 0
    keys, _ = _store_contents(tmp_path / "store")
    assert sorted(keys) == [f"{i:08d}" for i in range(6)]
    assert not [n for n in os.listdir(tmp_path / "store") if ".tmp-" in n]
