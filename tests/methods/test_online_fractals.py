"""Seed 000's Fractal rows as the paper's code runs them (gdl_term ``--train fractal_mixup``):
every training image is blended with a fractal drawn afresh each time it is loaded
(``FractalMixDataset.__getitem__``: ``random.randint`` per access; the model blends
``(1 − λ) x + λ F`` with λ = 0.2 on every batch), no clean originals, no store.

The fractal bank here holds constant images ``F_k = k / K`` (identifiable after blending a
zero image: ``C = λ F_k``), so the fractal each image got at each step is read back exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from augdiff import distributed
from augdiff.config import load_config
from augdiff.methods import hybrids
from augdiff.methods import online as online_lib
from augdiff.pipeline.wiring import classifier_config
from augdiff.train import classifier

K, B = 64, 16
SPEC = "augdiff/configs/exp_seed000_diffusemix.py:"


def _transform(label_scaling: bool = False) -> online_lib.OnlineFractals:
    bank = jnp.broadcast_to((jnp.arange(K, dtype=jnp.float32) / K)[:, None, None, None],
                            (K, 4, 4, 3))
    spec = hybrids.DiffuseMixSpec(mask="original", fractal=True, lam=0.2,
                                  label_scaling=label_scaling)
    return online_lib.OnlineFractals(spec=spec, key=jax.random.PRNGKey(7), fractals=bank)


def _batch(image: np.ndarray) -> dict:
    return {"image": jnp.asarray(image, jnp.float32), "weight": jnp.ones((B,), jnp.float32),
            "label": jnp.zeros((B,), jnp.int32), "source": jnp.zeros((B,), jnp.int32)}


def _fractal_ids(t: online_lib.OnlineFractals, step: int) -> np.ndarray:
    out = jax.jit(t.device)(_batch(np.zeros((B, 4, 4, 3))), step)
    x = np.asarray(out["image"])
    assert np.allclose(x, x[:, :1, :1, :1])  # a constant fractal per image
    return np.rint(x[:, 0, 0, 0] / 0.2 * K).astype(int)


def test_a_fresh_fractal_per_image_per_step():
    t = _transform()
    assert t.per_step  # the trainer hands it the step, not the epoch
    ids = np.stack([_fractal_ids(t, s) for s in range(6)])  # [step, image]
    assert ids.min() >= 0 and ids.max() < K
    # the same image at consecutive steps: a new draw (K = 64 choices: equal by chance 1/64)
    assert np.mean(ids[1:] != ids[:-1]) > 0.9
    # the images of one step draw independently
    assert all(len(set(row)) > B // 2 for row in ids)
    # a step is reproducible (a resumed run redraws the same fractals)
    np.testing.assert_array_equal(_fractal_ids(t, 3), ids[3])


def test_every_image_is_blended_and_no_clean_original_remains():
    rng = np.random.default_rng(0)
    img = rng.uniform(-1, 1, (B, 4, 4, 3)).astype(np.float32)
    for lsf, weight in ((False, 1.0), (True, 0.8)):
        t = _transform(lsf)
        ids = _fractal_ids(t, 5)
        out = jax.jit(t.device)(_batch(img), 5)
        want = 0.8 * img + 0.2 * (ids / K)[:, None, None, None]
        np.testing.assert_allclose(np.asarray(out["image"]), want, atol=1e-5)
        np.testing.assert_allclose(np.asarray(out["weight"]), weight, atol=1e-7)


@pytest.mark.slow  # compiles a tiny classifier's train step: ~1 min on 2 loaded cores
def test_train_step_hands_the_step_to_a_per_step_transform():
    """The wire inside the trainer: a per-step transform sees 0, 1, 2 at steps 0, 1, 2 (the
    epoch, with 10 steps per epoch, would be 0, 0, 0)."""
    c = load_config("configs/classify_cifar10.py:smoke")
    c.model.width = 4
    model, lr_fn, tx, shape = classifier.build_classifier(c, 2, 10)
    mesh = distributed.make_mesh()
    state = classifier.create_train_state(jax.random.PRNGKey(0), model, tx, (8, 8, 3))
    seen = []

    def record(batch, when):
        jax.debug.callback(lambda w: seen.append(int(w)), when)
        return batch

    n = 8 * len(jax.devices())  # divisible over the test mesh
    batch = {"image": np.zeros((n, 8, 8, 3), np.uint8), "label": np.zeros((n,), np.int32),
             "weight": np.ones((n,), np.float32), "source": np.zeros((n,), np.int32)}
    step = classifier.make_train_step(model, tx, mesh, state, num_classes=2, online=record,
                                      steps_per_epoch=10, online_per_step=True, donate=False)
    s = state
    for _ in range(3):
        s, _ = step(s, batch)
    jax.effects_barrier()
    assert seen == [0, 1, 2]  # the epoch would read 0, 0, 0


@pytest.mark.parametrize("row,lsf", [("fractal_0.20_lsf1.00", False),
                                     ("cpu-fractal_0.20_lsf0.80", True)])
def test_fractal_rows_train_online_on_real_images_by_default(repo_root, row, lsf, tmp_path):
    c = load_config(str(repo_root / (SPEC + row)))
    c.workdir = str(tmp_path / "run")
    assert "generate" not in c.stages and "train_real" in c.stages  # no store, real only
    sub = classifier_config(c, "real", 0, num_real=1000)
    assert sub.online.kind == "fractal" and sub.synthetic.path == ""
    for split in ("train", "test"):
        d = tmp_path / "data" / split / "a"
        d.mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "0.png")
    sub.data.path, sub.data.image_size = str(tmp_path / "data"), 8
    sub.diffusemix.fractal_bank_size = 4
    t = online_lib.make_online(sub, None, None)
    assert isinstance(t, online_lib.OnlineFractals) and t.per_step
    assert (t.spec.mask, t.spec.lam, t.spec.label_scaling) == ("original", 0.2, lsf)
    assert t.fractals.shape == (4, 8, 8, 3)


def test_stored_fractal_rows_are_kept_as_an_option(repo_root, tmp_path):
    c = load_config(str(repo_root / (SPEC + "cpu-fractal_0.20_lsf1.00_stored")))
    assert c.stages == ("prepare", "generate", "train_mixed", "report")
    assert c.generator.config.endswith("diffusemix_cifar100.py:fractal_0.20_lsf1.00")
    assert "online" not in c.classifier.overrides


class _Built(Exception):
    pass


def test_the_trainer_builds_the_fractal_rows_step_per_step(repo_root, tmp_path, monkeypatch):
    """train_and_evaluate on the cpu Fractal row's derived config builds OnlineFractals and
    asks make_train_step for the step (stopped right there: no training)."""
    for split in ("train", "test"):
        for name in ("a", "b"):
            d = tmp_path / "data" / split / name
            d.mkdir(parents=True)
            for j in range(8):
                Image.fromarray(np.full((8, 8, 3), 30 * j, np.uint8)).save(d / f"{j}.png")
    c = load_config(str(repo_root / (SPEC + "cpu-fractal_0.20_lsf0.80")))
    c.workdir = str(tmp_path / "run")
    c.data.path, c.data.image_size, c.data.per_class = str(tmp_path / "data"), 8, 0
    sub = classifier_config(c, "real", 0, num_real=16)
    sub.diffusemix.fractal_bank_size = 4
    sub.batch_size = 8
    got = {}

    def spy(*args, **kwargs):
        got.update(kwargs)
        raise _Built

    monkeypatch.setattr(classifier, "make_train_step", spy)
    with pytest.raises(_Built):
        classifier.train_and_evaluate(sub, online=online_lib.build)
    assert got["online_per_step"] is True
    assert isinstance(got["online"].__self__, online_lib.OnlineFractals)
