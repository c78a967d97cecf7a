"""Classifier training: sharded steps, full-split evaluation, exact resume, real-data smoke run."""

from __future__ import annotations

import importlib
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from augdiff import distributed
from augdiff.models.classifiers import get_classifier
from augdiff.train import losses
from augdiff.train.checkpoint import Checkpointer
from augdiff.train.classifier import (
    NonFiniteLossError,
    create_train_state,
    evaluate,
    learning_rate_fn,
    make_eval_step,
    make_optimizer,
    make_train_step,
    state_sharding,
    train_and_evaluate,
)

REPO = pathlib.Path(__file__).resolve().parents[2]
NUM_CLASSES, SIZE = 4, 16


def _config_module(name: str):
    return importlib.import_module(f"augdiff.configs.{name}")


def _class_image(rng: np.random.Generator, c: int) -> np.ndarray:
    """A learnable toy image: class ``c`` brightens channel ``c % 3`` and one quadrant."""
    img = rng.integers(0, 90, (SIZE, SIZE, 3)).astype(np.int32)
    img[..., c % 3] += 120
    q = SIZE // 2
    img[(c // 2) * q:(c // 2 + 1) * q, (c % 2) * q:(c % 2 + 1) * q] += 40
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def folder(tmp_path_factory) -> pathlib.Path:
    """An image-folder tree: train 12 / test 5 PNGs for each of 4 classes (20 test rows, so
    evaluation in batches of 8 ends with a padded batch)."""
    root = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 5)):
        for c in range(NUM_CLASSES):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(_class_image(rng, c)).save(d / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> pathlib.Path:
    from augdiff.data.store import StoreWriter

    root = tmp_path_factory.mktemp("store")
    rng = np.random.default_rng(1)
    with StoreWriter(root, method="toy", config={"num_classes": NUM_CLASSES},
                     process_index=0, shard_size=8) as w:
        for i in range(16):
            w.add(f"ex{i}", _class_image(rng, i % NUM_CLASSES), i % NUM_CLASSES)
    return root


def _toy_config(folder: pathlib.Path, workdir: pathlib.Path) -> ml_collections.ConfigDict:
    c = _config_module("classify_cifar10").get_config("smoke")
    c.workdir = str(workdir)
    c.data.path = str(folder)
    c.data.image_size = SIZE
    c.data.per_class = 0
    c.model.width = 8
    c.batch_size = 8
    c.epochs = 2
    c.eval_batch_size = 8
    c.optim.lr = 0.05
    c.progress = False
    return c


# ------------------------------------------------------------------- sharded train / eval steps

def _random_batch(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8),
        "label": rng.integers(0, NUM_CLASSES, n).astype(np.int32),
        "weight": np.where(np.arange(n) % 2, 0.5, 1.0).astype(np.float32),
        "source": (np.arange(n) % 2).astype(np.int32),
    }


@pytest.fixture(scope="session")
def setup():
    optim = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
             "schedule": "cosine"}
    lr_fn = learning_rate_fn(optim, steps_per_epoch=10, epochs=2)
    tx = make_optimizer(optim, lr_fn)
    model = get_classifier("preact_resnet_tiny", NUM_CLASSES, width=8)
    return model, tx, lr_fn


def _run_steps(setup, devices, batches, loss_kind="bce"):
    model, tx, lr_fn = setup
    mesh = distributed.make_mesh(devices=devices)
    state = create_train_state(jax.random.PRNGKey(0), model, tx, (SIZE, SIZE, 3))
    state = jax.device_put(state, state_sharding(state, mesh))
    step = make_train_step(model, tx, mesh, state, num_classes=NUM_CLASSES, loss_kind=loss_kind,
                           augment={"crop_flip": True, "cutout": 4, "mixup_alpha": 0.4},
                           lr_fn=lr_fn)
    out = []
    for b in batches:
        state, m = step(state, distributed.shard_batch(b, mesh))
        out.append(jax.device_get(m))
    assert step._cache_size() == 1  # compiled once: no retrace/recompile on later steps
    return state, out, mesh


@pytest.mark.slow
def test_train_step_same_loss_on_1_and_8_devices(setup):
    assert jax.device_count() == 8, "conftest should give 8 simulated CPU devices"
    batches = [_random_batch(16, s) for s in range(3)]
    s1, m1, _ = _run_steps(setup, jax.devices()[:1], batches)
    s8, m8, mesh8 = _run_steps(setup, jax.devices(), batches)
    for a, b in zip(m1, m8, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
        assert a["synthetic_share"] == b["synthetic_share"] == 0.5
    assert int(s8.step) == 3 and m8[-1]["lr"] == pytest.approx(float(setup[2](2)))
    # BatchNorm statistics are over the global batch, so parameters agree as well
    for a, b in zip(jax.tree_util.tree_leaves(s1.params), jax.tree_util.tree_leaves(s8.params),
                    strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5)
    # the 8-device state stays replicated and the batch split, as the jit shardings say
    leaf = jax.tree_util.tree_leaves(s8.params)[0]
    assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 8


def test_eval_counts_every_row_with_padding(setup, folder):
    """20 test rows in batches of 8: the padded last batch is masked, nothing dropped."""
    from augdiff.data.sources import open_real_source

    model, tx, _ = setup
    mesh = distributed.make_mesh()
    state = create_train_state(jax.random.PRNGKey(3), model, tx, (SIZE, SIZE, 3))
    state = jax.device_put(state, state_sharding(state, mesh))
    cfg = ml_collections.ConfigDict({"path": str(folder), "image_size": SIZE, "channels": 3})
    test = open_real_source(cfg, "test")
    ev = evaluate(make_eval_step(model, mesh, state, num_classes=NUM_CLASSES), state, test, 8, mesh)
    images = np.stack([test[i]["image"] for i in range(len(test))])
    labels = np.asarray([test[i]["label"] for i in range(len(test))])
    logits = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                         jnp.asarray(images, jnp.float32) / 127.5 - 1.0, train=False)
    order = np.argsort(-np.asarray(logits), axis=1, kind="stable")
    assert ev["test_count"] == 20
    assert ev["test_top1"] == pytest.approx(np.mean(order[:, 0] == labels))
    top5 = np.mean([labels[i] in order[i, :4] for i in range(20)])  # 4 classes: k = 4
    assert ev["test_top5"] == pytest.approx(top5) == 1.0
    ce = losses.softmax_cross_entropy(logits, jax.nn.one_hot(labels, NUM_CLASSES))
    assert ev["test_loss"] == pytest.approx(float(jnp.mean(ce)), rel=1e-5)
    # per class (index = label): top-1 and count over the same rows, padding excluded
    assert ev["test_class_count"] == [int(np.sum(labels == c)) for c in range(NUM_CLASSES)]
    assert ev["test_class_top1"] == pytest.approx(
        [np.mean(order[labels == c, 0] == c) for c in range(NUM_CLASSES)])


# ------------------------------------------------------------------ the loop: resume, metrics

class _Crash(RuntimeError):
    pass


@pytest.fixture(scope="session")
def uninterrupted(folder, store, tmp_path_factory):
    cfg = _mixed_config(folder, store, tmp_path_factory.mktemp("full"))
    return cfg, train_and_evaluate(cfg)


def _mixed_config(folder, store, workdir):
    """Real + synthetic (1:1), label scaling with BCE, checkpoints every 4 steps."""
    c = _toy_config(folder, workdir)
    c.synthetic.path = str(store)
    c.synthetic.schedule.kind = "constant"
    c.synthetic.schedule.rho = "1:1"
    c.synthetic.label_weight = 0.7
    c.loss.kind = "bce"
    c.checkpoint_every_steps = 4
    return c


def test_metrics_json_and_tensorboard(uninterrupted):
    cfg, result = uninterrupted
    workdir = pathlib.Path(cfg.workdir)
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result))
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    # One epoch = one pass over real ∪ synthetic (48 real + 16 synthetic), as augdiff run counts.
    assert metrics["steps_per_epoch"] == (48 + 16) // 8
    for e in metrics["epochs"]:
        assert e["synthetic_share"] == 0.5  # 1:1 ratio, exactly 4 of 8 rows in every batch
        assert e["test_count"] == 20 and math.isfinite(e["train_loss"])
    for k in ("train_loss", "test_top1", "test_top5", "synthetic_share"):
        assert metrics[k] == metrics["epochs"][-1][k]
    assert list((workdir / "tb").glob("events.out.tfevents.*"))
    assert Checkpointer(workdir / "checkpoints").latest_step() == 16
    # The final metrics are those of the final weights: restore step 16, read the test PNGs
    # here and recompute top-1, top-4 (4 classes) and the BCE loss (sum over classes of
    # softplus(−z)·t + softplus(z)·(1 − t), as the run is configured) in numpy.
    model = get_classifier("preact_resnet_tiny", NUM_CLASSES, width=8)
    like = create_train_state(jax.random.PRNGKey(0), model,
                              make_optimizer(cfg.optim, learning_rate_fn(cfg.optim, 8, 2)),
                              (SIZE, SIZE, 3))
    state, _ = Checkpointer(workdir / "checkpoints").restore(16, like)
    files = sorted((pathlib.Path(cfg.data.path) / "test").glob("class*/*.png"))
    labels = np.array([int(f.parent.name[len("class"):]) for f in files])
    images = np.stack([np.asarray(Image.open(f)) for f in files]).astype(np.float32)
    z = np.asarray(model.apply({"params": state.params, "batch_stats": state.batch_stats},
                               jnp.asarray(images / 127.5 - 1.0), train=False), np.float64)
    t = np.eye(NUM_CLASSES)[labels]
    softplus = lambda v: np.logaddexp(0.0, v)  # noqa: E731
    bce = np.sum(t * softplus(-z) + (1 - t) * softplus(z), axis=1)
    last = metrics["epochs"][-1]
    assert last["test_top1"] == pytest.approx(np.mean(z.argmax(1) == labels))
    assert last["test_top5"] == 1.0  # top-min(5, 4) of 4 classes always holds the label
    assert last["test_loss"] == pytest.approx(bce.mean(), rel=1e-4)


@pytest.mark.slow
def test_killed_run_resumes_to_identical_metrics_and_params(uninterrupted, folder, store,
                                                            tmp_path):
    cfg_full, full = uninterrupted
    cfg = _mixed_config(folder, store, tmp_path / "resumed")

    def crash(step, metrics):
        if step == 10:  # after the checkpoint at step 8 (end of epoch 1; epoch 2 has begun)
            raise _Crash(step)

    with pytest.raises(_Crash):
        train_and_evaluate(cfg, step_hook=crash)
    assert Checkpointer(tmp_path / "resumed" / "checkpoints").latest_step() == 8
    resumed = train_and_evaluate(cfg)
    run = json.loads((tmp_path / "resumed" / "run.json").read_text())
    assert run["resumed_from_step"] == 8
    assert resumed == full  # every per-epoch and final metric, bit for bit

    model = get_classifier("preact_resnet_tiny", NUM_CLASSES, width=8)
    lr_fn = learning_rate_fn(cfg.optim, 8, 2)
    like = create_train_state(jax.random.PRNGKey(0), model, make_optimizer(cfg.optim, lr_fn),
                              (SIZE, SIZE, 3))
    a, extras_a = Checkpointer(pathlib.Path(cfg_full.workdir) / "checkpoints").restore(None, like)
    b, extras_b = Checkpointer(tmp_path / "resumed" / "checkpoints").restore(None, like)
    assert extras_a["loader"] == extras_b["loader"]
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_eval_only_after_the_last_epoch_same_final_metrics(uninterrupted, folder, store,
                                                          tmp_path):
    """``eval_every_epochs = 0``: the test split is read once, after the last epoch; training
    is untouched, so the final figures equal those of the run that evaluates every epoch."""
    cfg_full, full = uninterrupted
    cfg = _mixed_config(folder, store, tmp_path / "last_only")
    cfg.eval_every_epochs = 0
    got = train_and_evaluate(cfg)
    assert [e["epoch"] for e in got["epochs"]] == [1, 2]
    assert "test_top1" not in got["epochs"][0]
    assert got["epochs"][0]["train_loss"] == full["epochs"][0]["train_loss"]
    assert got["epochs"][1] == full["epochs"][1]
    for k in ("test_top1", "test_top5", "test_loss"):
        assert got[k] == full[k]


def test_non_finite_loss_names_step_and_checkpoint(folder, tmp_path):
    cfg = _toy_config(folder, tmp_path / "nan")
    cfg.optim.lr = float("nan")  # the first update makes every parameter NaN
    cfg.checkpoint_every_steps = 1
    with pytest.raises(NonFiniteLossError, match=r"at step 2; last good checkpoint: checkpoint "
                                                 r"step 1"):
        train_and_evaluate(cfg)


def test_cli_main_reports_bad_data_path(tmp_path, capsys):
    from augdiff.commands import train as train_cmd

    cfg = _toy_config(tmp_path / "missing", tmp_path / "w")
    assert train_cmd.main(cfg) == 1
    assert "does not exist" in capsys.readouterr().err


def test_config_variants():
    c10 = _config_module("classify_cifar10")
    default, preact = c10.get_config(None), c10.get_config("preact")
    assert (default.model.name, default.optim.schedule, default.batch_size) == (
        "resnet18", "cosine", 128)
    assert (preact.model.name, preact.optim.schedule, tuple(preact.optim.milestones),
            preact.optim.weight_decay, preact.batch_size, preact.epochs) == (
        "preact_resnet18", "multistep", (100, 200), 1e-4, 100, 300)
    assert c10.get_config("preact_ls").loss.kind == "bce"
    c100 = _config_module("classify_cifar100")
    assert c100.get_config("smoke").model.name == "preact_resnet_tiny"
    assert c100.get_config(None).optim.schedule == "multistep"
    with pytest.raises(ValueError, match="unknown variant 'huge'"):
        c10.get_config("huge")


# ------------------------------------------------------------------------ real data (slow)

@pytest.mark.slow
def test_smoke_variant_reaches_30_percent_on_cifar10(cifar_zip, tmp_path):
    """The README quick-start: the smoke variant on real CIFAR-10, scored on all 10,000 test
    images, must reach top-1 >= 30 % (chance is 10 %)."""
    cfg = _config_module("classify_cifar10").get_config("smoke")
    cfg.data.path = str(cifar_zip)
    cfg.workdir = str(tmp_path / "smoke")
    cfg.progress = False
    result = train_and_evaluate(cfg)
    assert result["test_count"] == 10_000 and result["test_examples"] == 10_000
    assert result["test_top1"] >= 0.30, result
