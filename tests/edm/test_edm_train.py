"""EDM training / sampling-to-store: schedules, label wiring, resume, errors, CLI."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from augdiff.config import ConfigError, load_config
from augdiff.edm import sampling
from augdiff.edm import train as edm_train

SMOKE = "augdiff/configs/casd_cifar10.py:smoke"


def tiny_config(repo_root, cifar_zip, workdir, **train_overrides):
    """The smoke variant shrunk further: 8² images, 4 steps of 8, checkpoints every 2."""
    c = load_config(str(repo_root / SMOKE))
    c.workdir = str(workdir)
    c.data.path = str(cifar_zip)
    c.data.image_size = 8
    c.data.per_class = 16
    c.synthetic.shift_count = 32
    c.train.batch_size = 8
    c.train.total_images = 32
    c.train.checkpoint_every_steps = 2
    c.train.lr_rampup_images = 16
    c.train.log_every_steps = 1
    c.sample.num_steps = 3
    c.sample.batch_size = 8
    c.sample.grid = 4
    for k, v in train_overrides.items():
        c.train[k] = v
    return c


# ---------------------------------------------------------------------------------------
# Closed forms (no network).


def test_learning_rate_ramp_up_is_edm_formula():
    lr, b, ramp = 1e-3, 512, 10_000_000
    for step in [0, 1, 100, 19_531, 19_532, 50_000]:
        want = lr * min(step * b / ramp, 1.0)
        got = float(edm_train.learning_rate(step, lr=lr, batch_size=b, rampup_images=ramp))
        assert got == pytest.approx(want, rel=1e-6, abs=1e-12)
    # no ramp-up: full lr from the second step on (edm's first step has n = 0 images)
    no_ramp = edm_train.learning_rate(1, lr=lr, batch_size=b, rampup_images=0)
    assert float(no_ramp) == pytest.approx(lr)


def test_ema_beta_half_life_and_rampup():
    b, h = 512, 500_000
    # without ramp-up, after h images the old weights count one half: beta^(h/b) = 1/2
    beta = float(edm_train.ema_beta(10**6, batch_size=b, halflife_images=h, rampup_ratio=None))
    assert beta ** (h / b) == pytest.approx(0.5, rel=1e-4)
    # with ramp-up ratio r the half-life is min(h, n r)
    step, r = 1000, 0.05
    want = 0.5 ** (b / min(h, step * b * r))
    got = float(edm_train.ema_beta(step, batch_size=b, halflife_images=h, rampup_ratio=r))
    assert got == pytest.approx(want, rel=1e-5)
    assert float(edm_train.ema_beta(0, batch_size=b, halflife_images=h, rampup_ratio=r)) == 0.0
    ema = {"w": jnp.array([1.0, 2.0])}
    new = edm_train.ema_update(ema, {"w": jnp.array([3.0, 6.0])}, jnp.float32(0.25))
    np.testing.assert_allclose(new["w"], [0.25 * 1 + 0.75 * 3, 0.25 * 2 + 0.75 * 6])


class _LinearNet:
    """A stand-in network ``F = a·x + Σ_label e[label]`` that records what it is given."""

    def __init__(self, num_sources=2, num_classes=3):
        self.num_sources, self.num_classes = num_sources, num_classes
        self.seen: list[dict] = []

    def init(self, rngs, x, noise_labels, class_labels=None, source_labels=None, train=False):
        return {"params": {"a": jnp.ones(()), "src": jnp.zeros((self.num_sources,)),
                           "cls": jnp.zeros((self.num_classes,))}}

    def apply(self, variables, x, noise_labels, class_labels=None, source_labels=None,
              train=False, rngs=None):
        self.seen.append({"class": class_labels, "source": source_labels, "train": train})
        p = variables["params"]
        out = p["a"] * x
        if source_labels is not None:
            out = out + p["src"][source_labels][:, None, None, None]
        if class_labels is not None:
            out = out + p["cls"][class_labels][:, None, None, None]
        return out


def _step_cfg(mode, class_conditional=False):
    return edm_train.StepConfig(mode=mode, batch_size=4, lr=0.1, lr_rampup_images=8,
                                ema_halflife_images=40, ema_rampup_ratio=0.0, num_sources=2,
                                num_classes=3, class_conditional=class_conditional)


def _batch():
    return {"image": jnp.asarray(np.arange(4 * 2 * 2 * 3).reshape(4, 2, 2, 3) % 256, jnp.uint8),
            "source": jnp.asarray([0, 1, 0, 1], jnp.int32),
            "label": jnp.asarray([2, 0, 1, 2], jnp.int32)}


@pytest.mark.parametrize("mode,cc", [("casd", False), ("sda", False), ("dm", False),
                                     ("dm", True), ("casd", True)])
def test_modes_route_labels(mode, cc):
    cfg = _step_cfg(mode, cc)
    labels = edm_train.batch_labels(_batch(), cfg)
    if mode == "casd":
        np.testing.assert_array_equal(labels["source"], [0, 1, 0, 1])  # y: 0 real, 1 synthetic
    if cc:
        np.testing.assert_array_equal(labels["class"], [2, 0, 1, 2])
    if mode != "casd" and not cc:
        assert labels is None  # sda / dm: the network sees no label
    net = _LinearNet()
    apply = edm_train.make_net_apply(net)
    apply({"a": jnp.ones(()), "src": jnp.zeros(2), "cls": jnp.zeros(3)},
          jnp.zeros((4, 2, 2, 3)), jnp.zeros(4), labels, train=True)
    seen = net.seen[-1]
    assert (seen["source"] is not None) == (mode == "casd")
    assert (seen["class"] is not None) == cc
    assert seen["train"] is True


def test_songunet_gets_the_source_label_path_only_in_casd(repo_root):
    c = load_config(str(repo_root / SMOKE))
    c.data.image_size = 8
    shapes = {}
    for mode in ("casd", "sda"):
        c.mode = mode
        model = edm_train.build_model(c, num_classes=10)
        cfg = edm_train.StepConfig.from_config(c, num_classes=10)
        opt = edm_train.make_optimizer(c)
        st = jax.eval_shape(lambda k, m=model, o=opt, s=cfg: edm_train.init_state(
            k, m, o, (1, 8, 8, 3), s), jax.random.PRNGKey(0))
        shapes[mode] = st.params
    # CASD = the SDA network plus EDM's label path for y (seed 004 App. A.2).
    assert set(shapes["casd"]) - set(shapes["sda"]) == {"map_label"}
    assert shapes["casd"]["map_label"]["kernel"].shape == (2, 16)  # one-hot y -> noise emb
    assert set(shapes["sda"]) == set(shapes["casd"]) - {"map_label"}
    # bf16 mixed precision: compute dtype bf16, parameters (and so Adam/EMA) stay float32
    c.train.precision = "bfloat16"
    model = edm_train.build_model(c, num_classes=10)
    assert model.dtype == jnp.bfloat16
    params = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,)),
                                                 source_labels=jnp.zeros((1,), jnp.int32)),
                            jax.random.PRNGKey(0))["params"]
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(params)} == {jnp.dtype("float32")}
    out = jax.eval_shape(lambda p: model.apply({"params": p}, jnp.zeros((2, 8, 8, 3)),
                                               jnp.zeros((2,))), params)
    assert out.dtype == jnp.float32
    c.train.precision = "float16"
    with pytest.raises(ConfigError, match="train.precision"):
        edm_train.build_model(c, num_classes=10)


def test_train_step_adam_lr_and_ema():
    """One jitted step with a stand-in net equals Adam(lr(n)) then the EMA formula, exactly."""
    from augdiff.edm.core import EDMConfig, edm_loss

    cfg = _step_cfg("casd")
    net = _LinearNet()
    optimizer = optax.chain(optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8),
                            optax.scale_by_learning_rate(lambda n: edm_train.learning_rate(
                                n, lr=cfg.lr, batch_size=cfg.batch_size,
                                rampup_images=cfg.lr_rampup_images)))
    state = edm_train.init_state(jax.random.PRNGKey(0), net, optimizer, (4, 2, 2, 3), cfg)
    state = state.replace(ema=jax.tree_util.tree_map(lambda p: p + 0.5, state.params))
    key = jax.random.PRNGKey(1)
    apply = edm_train.make_net_apply(net)
    step = jax.jit(lambda s, b: edm_train.train_step(s, b, key, net_apply=apply,
                                                     optimizer=optimizer, edm_cfg=EDMConfig(),
                                                     cfg=cfg))
    s1, m1 = step(state, _batch())
    # step 0: lr = 0 (no image seen yet), params unchanged; EMA beta = 0.5^(4/40)
    assert float(m1["lr"]) == 0.0
    jax.tree_util.tree_map(np.testing.assert_array_equal, s1.params, state.params)
    s2, m2 = step(s1, _batch())
    assert float(m2["lr"]) == pytest.approx(0.1 * 4 / 8)
    # manual Adam step 2 with the same loss key
    k2 = jax.random.split(jax.random.fold_in(key, 1))[0]
    x0 = _batch()["image"].astype(jnp.float32) / 127.5 - 1

    def loss(p):
        return jnp.mean(edm_loss(k2, apply, p, x0, {"source": _batch()["source"]},
                                 cfg=EDMConfig(), train=True, rngs={}))

    g1 = jax.grad(lambda p: jnp.mean(edm_loss(
        jax.random.split(jax.random.fold_in(key, 0))[0], apply, p, x0,
        {"source": _batch()["source"]}, cfg=EDMConfig(), train=True, rngs={})))(state.params)
    g2 = jax.grad(loss)(s1.params)
    for name in ("a", "src"):
        m = 0.1 * g1[name] * 0.9 + 0.1 * g2[name]
        v = 0.001 * g1[name] ** 2 * 0.999 + 0.001 * g2[name] ** 2
        upd = (m / (1 - 0.9**2)) / (jnp.sqrt(v / (1 - 0.999**2)) + 1e-8)
        np.testing.assert_allclose(s2.params[name], s1.params[name] - 0.05 * upd,
                                   rtol=1e-5, atol=1e-7)
    beta = 0.5 ** (4 / 40)
    for name in ("a", "src"):
        np.testing.assert_allclose(s2.ema[name], beta * s1.ema[name] + (1 - beta) * s2.params[name],
                                   rtol=1e-6)
    assert float(m2["ema_beta"]) == pytest.approx(beta, rel=1e-6)
    assert np.abs(np.asarray(s2.params["src"])).sum() > 0  # the source embedding learns


def test_sample_fn_labels_guidance_and_per_example_noise():
    """Sampling with a stand-in net: y routes to the source label, guidance w = 1 is the
    conditional sampler and w = 0 the one of the negative label, and example i's result does
    not depend on the batch it is drawn in."""
    from augdiff.edm.core import EDMConfig

    net = _LinearNet()
    params = {"a": jnp.float32(0.5), "src": jnp.asarray([0.0, 2.0]), "cls": jnp.zeros(3)}
    kw = dict(mode="casd", image_shape=(2, 2, 3), num_sources=2, num_classes=3,
              class_conditional=False, num_steps=4)
    apply = edm_train.make_net_apply(net)
    key = jax.random.PRNGKey(3)
    idx, cls = jnp.arange(4), jnp.zeros(4, jnp.int32)

    def run(**over):
        return np.asarray(jax.jit(sampling.make_sample_fn(apply, EDMConfig(), **{**kw, **over}))(
            params, key, idx, cls))

    y0, y1 = run(source_label=0), run(source_label=1)
    assert np.abs(y0 - y1).mean() > 0.1  # the source label changes the samples
    np.testing.assert_allclose(run(source_label=0, guidance=1.0), y0, rtol=1e-6)
    np.testing.assert_allclose(run(source_label=0, guidance=0.0, guidance_label=1), y1,
                               rtol=1e-5, atol=1e-5)
    g2 = run(source_label=0, guidance=2.0, guidance_label=1)
    assert not np.allclose(g2, y0)
    sub = np.asarray(jax.jit(sampling.make_sample_fn(apply, EDMConfig(), **kw))(
        params, key, idx[2:], cls[2:]))
    np.testing.assert_allclose(sub, y0[2:], rtol=1e-6)
    with pytest.raises(ConfigError, match="source_label=5"):
        sampling.make_sample_fn(apply, EDMConfig(), **{**kw, "source_label": 5})


def test_samples_grid_is_readable(tmp_path):
    """``samples_grid.png``: 16² samples enlarged 4× (≥ 64 px a side), each tile equal to
    Pillow's own nearest-neighbour resize, white gaps between."""
    from PIL import Image

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    path = tmp_path / "grid.png"
    sampling.save_grid(images, str(path))
    grid = np.asarray(Image.open(path))
    assert grid.shape == (2 * 66 + 2, 3 * 66 + 2, 3)  # 3 columns, 2 rows, 2-px gaps
    for i in range(5):
        r, q = divmod(i, 3)
        tile = grid[2 + r * 66:2 + r * 66 + 64, 2 + q * 66:2 + q * 66 + 64]
        ref = np.asarray(Image.fromarray(images[i]).resize((64, 64), Image.NEAREST))
        np.testing.assert_array_equal(tile, ref)
    assert (grid[:2] == 255).all() and (grid[2:66, 66:68] == 255).all()
    big = rng.integers(0, 256, (1, 80, 80, 1), dtype=np.uint8)  # already large: kept 1×
    sampling.save_grid(big, str(path))
    np.testing.assert_array_equal(np.asarray(Image.open(path))[2:82, 2:82], big[0, ..., 0])


def test_example_labels_spread_evenly():
    labels = sampling.example_labels(np.arange(12), [1, 4, 7], class_conditional=True)
    np.testing.assert_array_equal(labels, [1, 4, 7] * 4)
    one = sampling.example_labels(np.arange(3), [4], class_conditional=False)
    np.testing.assert_array_equal(one, [4, 4, 4])  # a per-class generator keeps its class


def test_bad_config_is_named(repo_root, tmp_path):
    c = load_config(str(repo_root / SMOKE))
    c.workdir = str(tmp_path)
    c.mode = "mixed"
    with pytest.raises(ConfigError, match="config.mode must be one of"):
        edm_train.train(c)
    c.mode = "casd"
    c.train.batch_size = 12
    with pytest.raises(ConfigError, match="multiple of the 8 devices"):
        edm_train.train(c)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        sampling.sample_to_store(c)


# ---------------------------------------------------------------------------------------
# Real runs on a CIFAR-10 slice (tiny SongUNet, 8x8).


@pytest.fixture(scope="session")
def resumed_runs(repo_root, cifar_zip, tmp_path_factory):
    """An uninterrupted 4-step casd run, and one killed after 3 steps then resumed."""
    base = tmp_path_factory.mktemp("edm_train")
    full = tiny_config(repo_root, cifar_zip, base / "full")
    edm_train.train(full)
    killed = tiny_config(repo_root, cifar_zip, base / "killed")
    edm_train.train(killed, stop_after_steps=3)  # checkpoint at 2, step 3 lost
    # the shifted store is rebuilt from the same seed: keep the one already written
    edm_train.train(killed)
    return full, killed


def _restore(config):
    ck = edm_train.checkpointer(config)
    step = ck.latest_step()
    extras = edm_train.checkpoint_extras(ck, step)
    model = edm_train.build_model(config, num_classes=int(extras["num_classes"]))
    cfg = edm_train.StepConfig.from_config(config, num_classes=int(extras["num_classes"]))
    like = jax.eval_shape(lambda k: edm_train.init_state(
        k, model, edm_train.make_optimizer(config), (1, 8, 8, 3), cfg), jax.random.PRNGKey(0))
    state, _, _ = edm_train.restore_checkpoint(ck, like, step)
    ck.close()
    return step, state


@pytest.mark.slow
def test_killed_and_resumed_equals_uninterrupted(resumed_runs):
    full, killed = resumed_runs
    s_full, st_full = _restore(full)
    s_kill, st_kill = _restore(killed)
    assert s_full == s_kill == 4
    for a, b in zip(jax.tree_util.tree_leaves((st_full.params, st_full.ema, st_full.opt_state)),
                    jax.tree_util.tree_leaves((st_kill.params, st_kill.ema, st_kill.opt_state)),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # metrics: a loss per step, images/s, and the resolved config
    rows = [json.loads(line) for line in open(os.path.join(full.workdir, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) and r["images_per_s"] > 0 for r in rows)
    saved = json.load(open(os.path.join(full.workdir, "config.json")))
    assert saved["mode"] == "casd" and saved["train"]["batch_size"] == 8
    # the resumed run redid step 3 (its first record was dropped): each step logged once,
    # with the uninterrupted run's losses
    rk = [json.loads(line) for line in open(os.path.join(killed.workdir, "metrics.jsonl"))]
    assert [r["step"] for r in rk] == [1, 2, 3, 4]
    assert [r["loss"] for r in rk] == [r["loss"] for r in rows]


def test_resume_refuses_a_checkpoint_trained_with_another_loss_reduction():
    """A checkpoint from before ``train.loss_reduction`` existed was trained on the per-pixel
    mean; Adam's moments then scale with 1, not with the pixel count, so continuing it with
    the per-pixel sum multiplies the first updates and diverges (seen: loss ×768 at 16², then
    ×5 more after one step)."""
    saved_old = {"train": {"lr": 1e-3}}  # a config written before the field existed
    fields = edm_train.MODEL_FIELDS + edm_train.RESUME_FIELDS
    now_sum = {"train": {"lr": 1e-3, "loss_reduction": "sum"}}
    now_mean = {"train": {"lr": 1e-3, "loss_reduction": "mean"}}
    assert "train.loss_reduction" in edm_train.mismatching_fields(saved_old, now_sum, fields)
    assert "train.loss_reduction" not in edm_train.mismatching_fields(saved_old, now_mean,
                                                                       fields)
    # sampling only needs the model: the loss does not stop a checkpoint from loading
    assert "train.loss_reduction" not in edm_train.mismatching_fields(saved_old, now_sum)


def _tfrecord_scalars(path) -> dict[str, dict[int, float]]:
    """Scalars of a TensorBoard event file, read by the TFRecord framing written out here
    (u64 length, u32 crc, the Event proto, u32 crc), not by augdiff: tag -> {step: value}."""
    import struct

    from tensorboardX.proto import event_pb2

    out: dict[str, dict[int, float]] = {}
    raw = open(path, "rb").read()
    pos = 0
    while pos < len(raw):
        (n,) = struct.unpack("<Q", raw[pos:pos + 8])
        ev = event_pb2.Event.FromString(raw[pos + 12:pos + 12 + n])
        pos += 12 + n + 4
        for v in ev.summary.value:
            out.setdefault(v.tag, {})[int(ev.step)] = float(v.simple_value)
    return out


def test_tensorboard_log_holds_the_metrics_jsonl_losses(resumed_runs):
    """EDM training writes TensorBoard scalars (``workdir/tb``) beside ``metrics.jsonl``:
    the same loss and learning rate at the same steps."""
    full, _ = resumed_runs
    files = sorted((pathlib.Path(full.workdir) / "tb").glob("events.out.tfevents.*"))
    assert len(files) == 1
    tb = _tfrecord_scalars(files[0])
    rows = [json.loads(line) for line in open(os.path.join(full.workdir, "metrics.jsonl"))]
    assert tb["train/loss"] == pytest.approx({r["step"]: r["loss"] for r in rows}, rel=1e-6)
    assert tb["train/lr"] == pytest.approx({r["step"]: r["lr"] for r in rows}, rel=1e-6,
                                           abs=1e-12)


@pytest.mark.slow
def test_resume_of_a_pre_loss_reduction_checkpoint_is_refused_by_train(resumed_runs, tmp_path,
                                                                      repo_root):
    _, killed = resumed_runs
    work = tmp_path / "old"
    shutil.copytree(killed.workdir, work)
    ck = os.path.join(work, "checkpoints")
    last = max(int(d) for d in os.listdir(ck) if d.isdigit())
    meta = os.path.join(ck, str(last), "extras", "metadata")
    extras = json.load(open(meta))
    del extras["config"]["train"]["loss_reduction"]
    json.dump(extras, open(meta, "w"))
    os.remove(os.path.join(ck, str(last), "augdiff_checksum.json"))  # older augdiffs wrote none
    config = tiny_config(repo_root, killed.data.path, work)
    assert config.train.loss_reduction == "sum"
    with pytest.raises(ConfigError, match=r"train\.loss_reduction = 'mean'"):
        edm_train.train(config)
    config.train.loss_reduction = "mean"
    assert edm_train.train(config)["step"] == last  # resumes (nothing left to train)


@pytest.mark.slow
def test_non_finite_loss_names_step_sources_and_checkpoint(resumed_runs, repo_root, cifar_zip,
                                                          tmp_path):
    full, _ = resumed_runs
    c = tiny_config(repo_root, cifar_zip, tmp_path)
    shutil.copytree(os.path.join(full.workdir, "checkpoints", "2"),
                    tmp_path / "checkpoints" / "2")
    shutil.copytree(os.path.join(full.workdir, "shifted_red_tint"), tmp_path / "shifted_red_tint")
    c.train.lr = 1e38  # the first update from step 2 overflows the network
    with pytest.raises(edm_train.NonFiniteLossError) as err:
        edm_train.train(c)
    msg = str(err.value)
    assert "at step 3" in msg
    assert "source ids in the batch: [0, 1]" in msg
    assert os.path.join(str(tmp_path), "checkpoints", "2") in msg


def test_sample_config_mismatch_names_fields(resumed_runs, repo_root, cifar_zip, tmp_path):
    full, _ = resumed_runs
    c = tiny_config(repo_root, cifar_zip, full.workdir)
    c.model.dropout = 0.3
    c.edm.sigma_data = 0.25
    c.sample.store = str(tmp_path / "store")
    with pytest.raises(ConfigError) as err:
        sampling.sample_to_store(c)
    msg = str(err.value)
    assert "mismatching fields: model.dropout (checkpoint 0.0, config 0.3), " in msg
    assert "edm.sigma_data (checkpoint 0.5, config 0.25)" in msg
    assert "mode (" not in msg and "checkpoints/4" in msg


def test_sample_into_a_store_of_another_seed_is_refused(resumed_runs, repo_root, cifar_zip,
                                                       tmp_path):
    """The wire from ``sample_to_store`` to the manifest: the checkpoint's identity (step and
    a content hash of its files, per the documented definition), the provenance's model
    column, and a second run with another seed refused naming ``seed``, nothing rewritten."""
    import hashlib

    from augdiff.data.store import StoreWriteError, SyntheticStore

    full, _ = resumed_runs
    c = tiny_config(repo_root, cifar_zip, full.workdir)
    c.sample.store = str(tmp_path / "s")
    c.sample.grid = 0
    c.num_samples = 2
    sampling.sample_to_store(c)
    manifest = tmp_path / "s" / "manifest-p00000.json"
    m = json.loads(manifest.read_text())
    ckpt = os.path.join(full.workdir, "checkpoints", "4")
    lines = []
    for dirpath, _, files in os.walk(ckpt):
        for f in files:
            p = os.path.join(dirpath, f)
            lines.append(f"{os.path.relpath(p, ckpt)}\0"
                         f"{hashlib.sha256(open(p, 'rb').read()).hexdigest()}\n")
    assert m["model"] == {"kind": "edm", "step": 4, "path": os.path.abspath(ckpt),
                          "sha256": hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()}
    assert m["generating"]["seed"] == 0 and m["generating"]["steps"] == 3
    assert m["augdiff_version"] and m["fingerprint"]
    # the class names of the data the generator was trained on, read from the zip's listing
    names = sorted({n.split("/")[-2] for n in zipfile.ZipFile(cifar_zip).namelist()
                    if "/train/" in f"/{n}" and n.endswith(".jpg")})
    assert m["class_names"] == names and len(names) == 10
    prov = SyntheticStore(c.sample.store).provenance(0)
    assert prov["model"] and "4" in prov["model"]
    before = manifest.read_bytes()
    c.sample.seed = 1
    with pytest.raises(StoreWriteError, match=r"seed: 0 -> 1"):
        sampling.sample_to_store(c)
    assert manifest.read_bytes() == before
    c.sample.store = str(tmp_path / "s1")  # a new store: fine
    assert sampling.sample_to_store(c)["written"] == 2


@pytest.mark.slow
def test_sample_to_store_unique_keys_resume_and_reproducible(resumed_runs, repo_root, cifar_zip,
                                                             tmp_path):
    from augdiff.data.store import SyntheticStore

    full, _ = resumed_runs
    c = tiny_config(repo_root, cifar_zip, full.workdir)
    c.sample.store = str(tmp_path / "a")
    c.sample.shard_size = 2  # complete shards are the resume granularity
    c.num_samples = 5  # not a multiple of the 8 devices: padded, then trimmed
    out = sampling.sample_to_store(c)
    assert out == {"store": c.sample.store, "checkpoint_step": 4, "written": 5, "skipped": 0}
    c.num_samples = 9
    out = sampling.sample_to_store(c)
    assert out["written"] == 4 and out["skipped"] == 5
    store = SyntheticStore(c.sample.store)
    assert store.manifest["num_shards"] == 5  # 2 + 2 + 1, then 2 + 2
    keys = sorted(store.provenance(i)["key"] for i in range(len(store)))
    assert keys == [f"{i:08d}" for i in range(9)]
    prov = store.provenance(0)
    assert prov["checkpoint_step"] == 4 and prov["sampler"] == "heun" and prov["steps"] == 3
    assert prov["label"] == 0 and prov["seed"] == 0 and prov["nfe"] == 5
    assert os.path.exists(str(tmp_path / "samples_grid.png"))  # beside the store
    # one fresh call of 9 (other batch composition) gives the same bytes per example
    c.sample.store = str(tmp_path / "b")
    sampling.sample_to_store(c)
    fresh = SyntheticStore(c.sample.store)
    by_key = {store.provenance(i)["key"]: store[i]["image"] for i in range(len(store))}
    for i in range(len(fresh)):
        np.testing.assert_array_equal(fresh[i]["image"], by_key[fresh.provenance(i)["key"]])
    imgs = np.stack(list(by_key.values())).astype(np.float32)
    assert imgs.std(axis=0).mean() > 1.0  # different noise per example


@pytest.mark.slow
def test_cli_train_diffusion_then_sample(repo_root, cifar_zip, tmp_path):
    """``augdiff train-diffusion`` then ``augdiff sample`` in subprocesses (the settings of
    :func:`tiny_config`, so the persistent compilation cache is shared with the tests above)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    common = ["--config", str(repo_root / SMOKE), f"--config.workdir={tmp_path}",
              f"--config.data.path={cifar_zip}", "--config.data.image_size=8",
              "--config.data.per_class=16", "--config.synthetic.shift_count=32",
              "--config.train.batch_size=8", "--config.train.total_images=32",
              "--config.train.checkpoint_every_steps=2", "--config.train.lr_rampup_images=16",
              "--config.sample.num_steps=3", "--config.sample.batch_size=8",
              "--config.sample.grid=4"]
    cmd = [sys.executable, "-m", "augdiff.cli"]
    r = subprocess.run(cmd + ["train-diffusion", *common, "--config.mode=casd"],
                       capture_output=True, text=True, env=env, cwd=repo_root, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["step"] == 4
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
    r = subprocess.run(cmd + ["sample", *common, "--config.mode=casd", "--config.num_samples=3"],
                       capture_output=True, text=True, env=env, cwd=repo_root, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["written"] == 3 and out["store"] == str(tmp_path / "store")
    # sampling with another mode than the checkpoint's is refused, naming the field
    r = subprocess.run(cmd + ["sample", *common, "--config.mode=sda"],
                       capture_output=True, text=True, env=env, cwd=repo_root, timeout=600)
    assert r.returncode == 1
    assert "mismatching fields: mode (checkpoint 'casd', config 'sda')" in r.stderr


def test_train_step_runs_the_augment_pipe_and_sums_the_loss_over_pixels():
    """EDM: the net gets the pipe's 9-d labels; loss = mean_batch Σ_pixels (training_loop.py)."""
    import dataclasses

    import optax

    from augdiff.edm.augment import AugmentConfig
    from augdiff.edm.core import EDMConfig

    seen = []

    def net_apply(params, x, noise_labels, labels=None, *, train=False, rngs=None):
        seen.append(labels)
        return params["a"] * x

    params = {"a": jnp.ones(())}
    opt = optax.adam(1e-3)
    state = edm_train.TrainState(step=jnp.zeros((), jnp.int32), params=params, ema=params,
                                 opt_state=opt.init(params))
    key = jax.random.PRNGKey(0)
    out = {}
    for red, augment in [("mean", None), ("sum", None), ("sum", AugmentConfig(p=1.0))]:
        cfg = dataclasses.replace(_step_cfg("dm"), loss_reduction=red, augment=augment)
        _, m = edm_train.train_step(state, _batch(), key, net_apply=net_apply, optimizer=opt,
                                    edm_cfg=EDMConfig(), cfg=cfg)
        out[(red, augment is not None)] = float(m["loss"])
    assert seen[0] is None  # dm without augmentation: no labels at all
    assert out[("sum", False)] == pytest.approx(out[("mean", False)] * 2 * 2 * 3, rel=1e-5)
    assert seen[-1]["augment"].shape == (4, 9)
    assert np.abs(np.asarray(seen[-1]["augment"][:, 2:])).sum() > 0  # ops were applied


def test_union_every_example_equally_likely_with_source_ids():
    """Seed 004 eq. 5: one epoch of the union visits each real and synthetic row once."""
    class Src:
        def __init__(self, n, label):
            self.n, self.label = n, label
            self.class_names, self.num_classes = ["a", "b"], 2

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            return {"image": np.full((2, 2, 3), i % 256, np.uint8), "label": np.int32(self.label),
                    "source": np.int32(0), "weight": np.float32(1), "index": np.int64(i)}

    c = load_config(SMOKE)
    c.mode = "casd"
    c.model.num_sources = 3
    real, s1, s2 = Src(4, 0), Src(8, 1), Src(12, 1)
    first, second, frac = edm_train.training_source(c, real, [s1, s2])
    assert second is None and frac == 0.0 and len(first) == 24
    np.testing.assert_array_equal(np.bincount(first.sources), [4, 8, 12])
    assert [int(first[i]["source"]) for i in (0, 3, 4, 11, 12, 23)] == [0, 0, 1, 1, 2, 2]
    c.train.batch_size = 8
    loader = edm_train.make_loader(c, real, [s1, s2], total_steps=3)
    seen = np.concatenate([next(iter(loader))["index"] for _ in range(3)])
    loader.close()
    np.testing.assert_array_equal(np.sort(seen), np.arange(24))  # one pass = every row once
    c.model.num_sources = 2
    with pytest.raises(ConfigError, match="num_sources"):
        edm_train.training_source(c, real, [s1, s2])
    c.model.num_sources = 3
    c.synthetic.mixing = "ratio"
    first, second, frac = edm_train.training_source(c, real, [s1, s2])
    assert first is real and len(second) == 20 and frac == c.synthetic.fraction
