"""Self-calibrating fidelity metrics: control images, the discrimination verdict, the report."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from augdiff.metrics import evaluate as E
from augdiff.metrics.features import Extractor


def _smooth_images(n: int, seed: int, size: int = 16) -> np.ndarray:
    """'Real' images: smooth colour gradients plus a soft blob (low-frequency content)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        a, b, c = rng.uniform(-1, 1, 3)
        cy, cx = rng.uniform(0.2, 0.8, 2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.05)
        base = 128 + 50 * (a * yy + b * xx) + 60 * c * blob
        tint = rng.uniform(-20, 20, 3)
        out[i] = np.clip(base[..., None] + tint, 0, 255).astype(np.uint8)
    return out


def _gradient_features(images: np.ndarray) -> np.ndarray:
    """A hand-written extractor that sees texture: channel means, stds and the mean absolute
    horizontal / vertical differences per channel."""
    x = images.astype(np.float64) / 255.0
    dx = np.abs(np.diff(x, axis=2)).mean(axis=(1, 2))
    dy = np.abs(np.diff(x, axis=1)).mean(axis=(1, 2))
    return np.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2)), dx, dy], 1).astype(
        np.float32)


def _useless_features(images: np.ndarray) -> np.ndarray:
    """Features that ignore the image entirely (seeded by the batch size only)."""
    return np.random.default_rng(len(images)).standard_normal((len(images), 8)).astype(
        np.float32)


def _metrics(extractor: Extractor, n: int = 150) -> dict:
    real = _smooth_images(n, 0)
    held = _smooth_images(n, 1)
    syn = _smooth_images(n, 2)
    return E.compute_metrics(extractor, real, syn, key=jax.random.key(0), kid_subsets=5,
                             kid_subset_size=50, prdc_k=5, held_out=held, seed=0)


def test_noise_control_is_gaussian_pixels():
    held = np.zeros((64, 16, 16, 3), np.uint8)
    raw = E.control_images("noise", held, seed=3)
    assert raw.shape == held.shape and raw.dtype == np.uint8
    noise = raw.astype(np.float64)
    # clip(round(127.5 + 64 n)): mean 127.5, std ~64 (clipping at 0/255 is at ~2 sigma)
    assert abs(noise.mean() - 127.5) < 1.0
    assert 58.0 < noise.std() < 64.5


def test_blur_control_matches_direct_2d_gaussian():
    img = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    got = E.control_images("blur", img, seed=0).astype(np.int64)
    sigma = 16 / 8.0
    r = int(np.ceil(3 * sigma))
    t = np.arange(-r, r + 1)
    w2 = np.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (2 * sigma**2))
    w2 /= w2.sum()
    xp = np.pad(img.astype(np.float64), ((0, 0), (r, r), (r, r), (0, 0)), mode="reflect")
    want = np.zeros(img.shape, np.float64)
    for i in range(2 * r + 1):
        for j in range(2 * r + 1):
            want += w2[i, j] * xp[:, i:i + 16, j:j + 16]
    assert np.max(np.abs(got - np.rint(want))) <= 1


def test_shuffle_control_permutes_patches():
    img = np.random.default_rng(1).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    out = E.control_images("shuffle", img, seed=5)
    assert not np.array_equal(out, img)

    def patches(a):
        return sorted(a[y:y + 4, x:x + 4].tobytes() for y in range(0, 16, 4)
                      for x in range(0, 16, 4))

    for i in range(3):
        assert patches(out[i]) == patches(img[i])


def test_useless_extractor_triggers_the_warning():
    m = _metrics(Extractor("useless", _useless_features, 8))
    assert set(m["controls"]) == set(E.CONTROLS)
    assert m["discriminates"] is False
    assert "this extractor does not discriminate; the numbers below say nothing about quality" \
        in m["warning"]
    from augdiff.pipeline.report import fidelity_table

    ev = {"extractor": m["extractor"], "fid": m["fid"]["value"],
          "kid_mean": m["kid"]["mean"], "kid_std": m["kid"]["std"], "prdc_k": 5,
          **{k: m[k]["value"] for k in ("precision", "recall", "density", "coverage")},
          "controls": m["controls"], "warning": m["warning"],
          "discriminates": m["discriminates"]}
    text = "\n".join(fidelity_table(ev))
    assert "does not discriminate" in text
    for label in ("floor: held-out real", "generator", "ceiling: Gaussian noise",
                  "ceiling: real, blurred", "ceiling: real, patches shuffled"):
        assert label in text
    assert text.count("`useless`") >= 5  # the extractor named in every row


def test_good_extractor_separates_ceiling_from_floor():
    m = _metrics(Extractor("gradients", _gradient_features, 12))
    assert m["discriminates"] is True and m["warning"] == ""
    fl, no = m["controls"]["floor"], m["controls"]["noise"]
    assert no["fid"]["value"] > 20 * max(fl["fid"]["value"], 1e-6)
    assert no["precision"]["value"] < 0.1 and fl["precision"]["value"] > 0.5
    # the generator here draws from the same distribution as the floor: it reads like it
    assert m["fid"]["value"] < 0.5 * no["fid"]["value"]


@pytest.mark.parametrize("fid_noise,prec_noise,ok", [(10.0, 0.1, True), (1.5, 0.1, False),
                                                      (10.0, 0.6, False)])
def test_discrimination_thresholds(fid_noise, prec_noise, ok):
    c = {"floor": {"fid": {"value": 1.0}, "precision": {"value": 0.9}},
         "noise": {"fid": {"value": fid_noise}, "precision": {"value": prec_noise}}}
    assert E.discrimination(c)["discriminates"] is ok


def test_report_says_when_the_shipped_generator_changed_after_sampling(repo_root):
    """The provenance sentence takes the step from the run's generate stage; when the package
    now ships another step, it does not borrow that record's figures."""
    import json

    from augdiff.config import load_config
    from augdiff.pipeline.report import describe_generator

    c = load_config(str(repo_root / "augdiff/configs/quickstart.py"))
    shipped = json.loads((repo_root / "augdiff/assets/generator_cifar10/generator.json")
                         .read_text())
    same = {"generate": {"checkpoint_step": shipped["step"], "num_images": 500,
                         "sampler": "heun", "sampler_steps": 12}}
    text = describe_generator(c, same)
    assert f"{shipped['images_seen']:,} images" in text and "now holds" not in text
    older = {"generate": {**same["generate"], "checkpoint_step": shipped["step"] - 1}}
    text = describe_generator(c, older)
    assert f"step {shipped['step'] - 1} when this run sampled it" in text
    assert f"now holds step {shipped['step']}" in text
    assert f"{shipped['images_seen']:,} images" not in text


def test_report_names_the_model_the_method_store_records(repo_root):
    """A method's generator is named from its store's manifest (what ran), not from the
    experiment's ``generator.weights`` field, which only fills in for older stores."""
    from augdiff.config import load_config
    from augdiff.pipeline.report import describe_generator

    c = load_config(str(repo_root / "augdiff/configs/exp_seed001_augcond.py:fewshot"))
    c.generator.weights = "random"  # the config's claim ...
    ran = {"generate": {"num_images": 40, "method": "augcond", "model": "weights/sd21-unclip"}}
    text = describe_generator(c, ran)  # ... is overruled by what the store records
    assert "**User weights** from `weights/sd21-unclip`" in text and "Random" not in text
    tiny = {"generate": {**ran["generate"], "model": "tiny-random:unclip"}}
    c.generator.weights = "weights/sd21-unclip"
    assert describe_generator(c, tiny).startswith("**Random weights**")
    old = {"generate": {"num_images": 40, "method": "augcond"}}  # a store without the field
    assert "`weights/sd21-unclip`" in describe_generator(c, old)
