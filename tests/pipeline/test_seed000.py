"""Seed 000 against independent references: DiffuseMix's published combine + blend, the seed
000 code's loss and schedules, one definition of an epoch, and the Table 1-2 report rows."""

import importlib.util
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from augdiff.methods import hybrids as H

REPO = pathlib.Path(__file__).resolve().parents[2]


def _diffusemix_generated_weight(size: int, vertical: bool, blend_width: int = 20) -> np.ndarray:
    """DiffuseMix's published ``combine_images`` mask, rewritten from its definition: along the
    split axis, ``size/2 - blend_width/2`` zeros, ``linspace(0, 1, blend_width)``, then ones;
    the result is the weight of the GENERATED image (so the original sits top / left)."""
    n0 = size // 2 - blend_width // 2
    line = np.concatenate([np.zeros(n0), np.linspace(0.0, 1.0, blend_width),
                           np.ones(size - n0 - blend_width)])
    return np.tile(line[:, None], (1, size)) if vertical else np.tile(line[None, :], (size, 1))


def _reference_diffusemix(orig, gen, fractal, vertical, alpha=0.2):
    """``blend(combine(I, Î), F)`` of DiffuseMix: ``(1 − m) I + m Î``, then
    ``(1 − α) H + α F`` with α = 0.2."""
    m = _diffusemix_generated_weight(orig.shape[0], vertical)[..., None]
    hyb = (1.0 - m) * orig + m * gen
    return (1.0 - alpha) * hyb + alpha * fractal


@pytest.fixture(scope="module")
def pairs256():
    rng = np.random.default_rng(0)
    o, g, f = (rng.uniform(-1, 1, (2, 256, 256, 3)).astype(np.float32) for _ in range(3))
    return o, g, f


@pytest.mark.parametrize("orientation", ["vertical", "horizontal"])
def test_diffusemix_equals_published_combine_and_blend_at_256(pairs256, orientation):
    o, g, f = pairs256
    spec = H.DiffuseMixSpec(orientation=orientation, ramp=H.DIFFUSEMIX_RAMP_256, fractal=True,
                            lam=0.2)
    for b in range(2):
        x, w = H.diffusemix(jax.random.key(3), jnp.asarray(o[b:b + 1]), jnp.asarray(g[b:b + 1]),
                            jnp.array([b]), jnp.asarray(f[b:b + 1]), spec=spec)
        want = _reference_diffusemix(o[b], g[b], f[b], orientation == "vertical")
        np.testing.assert_allclose(np.asarray(x[0]), want, atol=2e-6)
        assert float(w[0]) == 1.0


def test_seam_ramp_is_diffusemix_linspace_scaled_to_32():
    assert H.DIFFUSEMIX_RAMP_32 == pytest.approx(2.375)
    # The 256² ramp has slope 1/19 per pixel: scaled by 32/256 the original weight at pixel
    # centres 15.5 and 16.5 (seam 16) is 1/2 ± 0.5 · 8/19; every other pixel is 0 or 1.
    line = np.asarray(H.concat_mask(32, 32, orientation="vertical")[:, 0])
    want = np.r_[np.ones(15), 0.5 + 4 / 19, 0.5 - 4 / 19, np.zeros(15)]
    np.testing.assert_allclose(line, want, atol=1e-6)


def test_original_top_left_generated_bottom_right_for_random_orientation():
    """Fails when original and generated halves are swapped: with the original all +1 and the
    edit all −1, each pair's top-left quarter is +1 and its bottom-right quarter −1, whichever
    orientation the pair drew, and exactly half the mass comes from each."""
    b = 64
    o = jnp.ones((b, 32, 32, 3))
    g = -jnp.ones((b, 32, 32, 3))
    spec = H.DiffuseMixSpec(fractal=False)
    x, _ = H.diffusemix(jax.random.key(0), o, g, jnp.arange(b), spec=spec)
    x = np.asarray(x)
    np.testing.assert_array_equal(x[:, :14, :14], 1.0)
    np.testing.assert_array_equal(x[:, 18:, 18:], -1.0)
    np.testing.assert_allclose(x.mean(axis=(1, 2, 3)), 0.0, atol=1e-5)
    # Both orientations occur: the top-right quarter is original for vertical pairs only.
    top_right = x[:, :14, 18:].mean(axis=(1, 2, 3))
    assert set(np.round(top_right).astype(int)) == {-1, 1}


def test_fractal_rows_blend_into_the_original_only():
    """Table 1's Fractal rows: C = 0.8 I + 0.2 F, no generated content, target 0.8 with Lsf."""
    rng = np.random.default_rng(1)
    o, g, f = (jnp.asarray(rng.uniform(-1, 1, (3, 8, 8, 3)), jnp.float32) for _ in range(3))
    for lsf, weight in ((False, 1.0), (True, 0.8)):
        spec = H.DiffuseMixSpec(mask="original", fractal=True, lam=0.2, label_scaling=lsf)
        x, w = H.diffusemix(jax.random.key(0), o, g, jnp.arange(3), f[:1], spec=spec)
        np.testing.assert_allclose(np.asarray(x), 0.8 * np.asarray(o) + 0.2 * np.asarray(f[:1]),
                                   atol=1e-6)
        np.testing.assert_allclose(np.asarray(w), weight, atol=1e-7)


def test_interval_rows_draw_lambda_uniformly_without_label_scaling():
    """eq. 4 with λ ~ U[α, β] (the seed 000 code draws ``uniform(α, β)`` per image); the
    Hybrid rows keep Lsf 1.00. With H = 0 and F = 1, C = λ."""
    n = 4000
    spec = H.DiffuseMixSpec(fractal=True, lam=(0.1, 0.2), label_scaling=False)
    z = jnp.zeros((n, 2, 2, 1))
    x, w = H.diffusemix(jax.random.key(1), z, z, jnp.arange(n), jnp.ones((5, 2, 2, 1)), spec=spec)
    lam = np.asarray(x[:, 0, 0, 0])
    assert lam.min() >= 0.1 and lam.max() <= 0.2
    assert abs(lam.mean() - 0.15) < 0.002 and abs(lam.var() - 0.01 / 12) < 1e-4
    np.testing.assert_array_equal(np.asarray(w), 1.0)


def test_bce_softmax_equals_torch_bceloss_on_softmax():
    torch = pytest.importorskip("torch")
    from augdiff.train import losses

    rng = np.random.default_rng(0)
    z = rng.normal(size=(6, 10)).astype(np.float32) * 3
    y = rng.integers(0, 10, 6)
    w = np.array([1, 0.8, 1, 0.8, 0.75, 1], np.float32)
    t = np.eye(10, dtype=np.float32)[y] * w[:, None]
    want = torch.nn.BCELoss()(torch.softmax(torch.tensor(z), 1), torch.tensor(t)).item()
    got = losses.classification_loss("bce_softmax", jnp.asarray(z), jnp.asarray(np.eye(10)[y]),
                                     jnp.asarray(w))
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_seed000_schedules_equal_the_code_definitions():
    """gdl_term's ``ratio`` rules (linear t/T; warm-up 0 before w = 50, then (t − w)/(T − w);
    step 0 / 0.5 / 1 at 100 / 200) against the configured schedules."""
    from augdiff.config import load_config
    from augdiff.data import schedules

    def ref(kind, t, T=300):
        if kind == "dm_lin":
            return t / T
        if kind == "dm_warm":
            return 0.0 if t < 50 else min(1.0, (t - 50) / (T - 50))
        return 0.0 if t < 100 else 0.5 if t < 200 else 1.0

    for row in ("dm_lin", "dm_warm", "dm_step"):
        cfg = load_config(f"{REPO / 'augdiff' / 'configs' / 'exp_seed000_diffusemix.py'}:{row}")
        s = schedules.from_config(cfg.mixed.schedule, epochs=300)
        for t in (0, 49, 50, 99, 100, 150, 199, 200, 299):
            assert s(t) == pytest.approx(ref(row, t)), (row, t)


def test_one_epoch_definition_for_train_and_run():
    from augdiff.config import load_config
    from augdiff.pipeline import wiring
    from augdiff.train.classifier import epoch_steps

    assert epoch_steps(50_000, 50_000, 100) == 1000
    assert epoch_steps(50_000, 0, 100) == 500
    assert epoch_steps(50_000, 50_000, 100, fixed=7) == 7
    c = load_config(f"{REPO / 'augdiff' / 'configs' / 'exp_seed000_diffusemix.py'}:baseline")
    c.workdir = "/tmp/augdiff-test-epoch"
    sub = wiring.classifier_config(c, "mixed", 0, num_real=50_000, num_synthetic=50_000,
                                   store="/tmp/s")
    assert sub.steps_per_epoch == 500  # seed 000: gdl_term's equal budget, N real per epoch
    sub = wiring.classifier_config(c, "real", 0, num_real=50_000)
    assert sub.steps_per_epoch == 500
    c.mixed.epoch_budget = "union"
    sub = wiring.classifier_config(c, "mixed", 0, num_real=50_000, num_synthetic=50_000,
                                   store="/tmp/s")
    assert sub.steps_per_epoch == 1000  # the union, as augdiff train counts it


def _exp_module():
    path = REPO / "augdiff" / "configs" / "exp_seed000_diffusemix.py"
    spec = importlib.util.spec_from_file_location("exp_seed000_for_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_table_row_is_a_named_row_with_the_papers_numbers():
    from augdiff.config import load_config

    mod = _exp_module()
    table1 = ["baseline", "vanilla", "dm_lin", "dm_warm", "dm_step", "hybrid_0.05_0.15",
              "hybrid_0.10_0.20", "hybrid_0.15_0.25", "hybrid_0.20_0.30",
              "fractal_0.20_lsf1.00", "fractal_0.20_lsf0.80"]
    table2 = ["dc", "shb", "shb_fractal", "random"]
    assert list(mod.ROWS) == table1 + table2
    # Table 1 / 2 of the paper (Top-1, Top-5).
    assert mod.PAPER["baseline"][4:] == (68.63, 87.92)
    assert mod.PAPER["vanilla"][4:] == (75.35, 91.66)
    assert mod.PAPER["hybrid_0.20_0.30"][4:] == (64.86, 85.92)
    assert mod.PAPER["fractal_0.20_lsf0.80"][3:] == ("0.80", 74.21, 91.50)
    assert mod.PAPER["shb"][4:] == (69.50, 87.99)
    for row in mod.ROWS:
        c = load_config(f"{REPO / 'augdiff' / 'configs' / 'exp_seed000_diffusemix.py'}:{row}")
        assert c.classifier.overrides.loss.kind == "bce_softmax"
        assert c.generator.config.endswith(f"diffusemix_cifar100.py:{row}")


def test_paper_table_layout():
    """The paper's side of the table comes from the table config's ``paper`` fields, in the
    paper's row order (Tables 1-2 of seed 000)."""
    from augdiff.config import load_config
    from augdiff.pipeline.tables import paper_rows, paper_table

    paper = paper_rows(load_config("configs/exp_seed000_diffusemix.py:ci"))
    assert list(paper) == [
        "baseline", "vanilla", "dm_lin", "dm_warm", "dm_step", "hybrid_0.05_0.15",
        "hybrid_0.10_0.20", "hybrid_0.15_0.25", "hybrid_0.20_0.30", "fractal_0.20_lsf1.00",
        "fractal_0.20_lsf0.80", "dc", "shb", "shb_fractal", "random"]
    assert paper["vanilla"][4:] == (75.35, 91.66) and paper["shb"][4:] == (69.50, 87.99)
    md = paper_table(["baseline", "shb_fractal"], paper,
                     {"baseline": {"test_top1": 0.5, "test_top5": 0.9}})
    lines = md.splitlines()
    assert lines[0].startswith("| Method | Sch. | Ratio | Lsf | Top-1 paper | Top-1 augdiff")
    assert lines[2] == (
        "| Baseline | Con | 0.0 | 1.00 | 68.63 | 50.00 | 87.92 | 90.00 | `baseline` |")
    assert lines[3] == "| SHB + fractal | Con | 0.20 | 1.00 | — | — | — | — | `shb_fractal` |"


def test_sdedit_follows_the_gaussian_probability_flow():
    """For data ~ N(0, s²I) the ideal denoiser is D(x; σ) = s²/(s² + σ²)·x and the
    probability-flow ODE from σ_start to 0 maps x to x·s/√(s² + σ_start²); SDEdit starts at
    x₀ + σ_start·n."""
    from augdiff.edm.edit import edit_prompt, sdedit

    s, sigma_start = 0.5, 1.3
    rng = np.random.default_rng(0)
    x0 = jnp.asarray(rng.normal(size=(4, 3)) * s, jnp.float32)
    noise = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
    den = lambda x, sig: s**2 / (s**2 + sig**2) * x  # noqa: E731
    got = sdedit(den, x0, noise, sigma_start, 40)
    want = (np.asarray(x0) + sigma_start * np.asarray(noise)) * s / np.sqrt(s**2 + sigma_start**2)
    np.testing.assert_allclose(np.asarray(got), want, rtol=4e-3, atol=1e-4)  # Heun, 40 steps
    assert edit_prompt(1.0, 3) == "sdedit sigma_start=1 class=3"
    with pytest.raises(ValueError, match="sigma_start"):
        sdedit(den, x0, noise, 0.001, 4)


def _image_folder(root: pathlib.Path, n_per_class: int = 2, size: int = 16) -> pathlib.Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n_per_class):
                a = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(a).save(root / split / cls / f"{i}.png")
    return root


def test_shb_blends_the_full_resolution_edit(tmp_path):
    """SHB reads the edits at the resolution they were made at (32² here, stored at 16²): with
    the stored 16² edits black and the full 32² edits equal to the bicubic 32² original, the
    hybrid is the original brought back to 16² (no black); with white full edits about half
    of it is bright; without the full edits the run stops with a one-line error."""
    from PIL import Image

    from augdiff.config import load_config
    from augdiff.data.sources import open_real_source
    from augdiff.data.store import StoreWriter, SyntheticStore
    from augdiff.methods import diffusemix as DM
    from augdiff.methods import edits as E

    data = _image_folder(tmp_path / "data")
    cfg = load_config(f"{REPO / 'augdiff' / 'configs' / 'diffusemix_cifar100.py'}:shb", [
        f"workdir={tmp_path / 'w'}", f"data.path={data}", "data.tfds_name=",
        "data.image_size=16", "data.per_class=0", "diffusemix.shb.clip=",
        "diffusemix.shb.tiny=True", "diffusemix.hybrid_batch_size=4", "progress=False"])
    real = open_real_source(cfg.data, "train")
    n = len(real)
    up = lambda a, s: np.asarray(Image.fromarray(a).resize((s, s), Image.BICUBIC))  # noqa: E731
    o32 = [up(real[i]["image"], 32) for i in range(n)]
    _, hkey, fkey = E.run_keys(0)

    def stores(root, full_images):
        man = dict(resolution=32, image_size=16, num_classes=2, class_names=["cat", "dog"])
        for sub, images in (("edits", [np.zeros((16, 16, 3), np.uint8)] * n),
                            ("edits_full", full_images)):
            if images is None:
                continue
            with StoreWriter(str(root / sub), method="diffusemix", config=man) as w:
                for i in range(n):
                    w.add(f"edit-r{i:07d}-p00", images[i], int(real.labels[i]), 1,
                          dict(parent=i, parent_name=real.name_of(i), prompt="p",
                               prompt_index=0, example=i, seed=0))
        return str(root / "edits")

    edits = stores(tmp_path / "a", o32)
    DM._generate_hybrids(cfg, real, edits, str(tmp_path / "a" / "h"), hkey, fkey, False)
    h = SyntheticStore(str(tmp_path / "a" / "h"))
    for r in range(len(h)):
        i = h.provenance(r)["parent"]
        want = up(o32[i], 16).astype(int)
        assert np.abs(h[r]["image"].astype(int) - want).max() <= 2
        assert h.provenance(r)["hybrid"]["resolution"] == 32

    rng = np.random.default_rng(1)  # bright, textured edits (crops differ, so S has no ties)
    white = [rng.integers(200, 256, (32, 32, 3), dtype=np.uint8) for _ in range(n)]
    edits = stores(tmp_path / "b", white)
    DM._generate_hybrids(cfg, real, edits, str(tmp_path / "b" / "h"), hkey, fkey, False)
    h = SyntheticStore(str(tmp_path / "b" / "h"))
    for r in range(len(h)):
        i = h.provenance(r)["parent"]
        half = 0.5 * up(o32[i], 16).astype(float) + 0.5 * up(white[i], 16).astype(float)
        assert abs(h[r]["image"].mean() - half.mean()) < 12

    edits = stores(tmp_path / "c", None)
    with pytest.raises(ValueError, match="full-resolution edits"):
        DM._generate_hybrids(cfg, real, edits, str(tmp_path / "c" / "h"), hkey, fkey, False)


def test_fig3_pca_is_fitted_on_the_originals_only():
    """Fig. 3's axes are the originals' principal axes (the seed 000 code fits PCA on the
    original set and transforms the others): against the eigenvectors of the originals'
    covariance, and unchanged by the other sets."""
    from augdiff.analysis.pca import project_on_originals

    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 6)) * np.array([3.0, 2.0, 1.0, 0.5, 0.3, 0.1])
    b = rng.normal(size=(50, 6)) + 5.0
    pca, xy = project_on_originals({"original": a, "generated": b})
    w, v = np.linalg.eigh(np.cov(a.T))  # ascending
    top = v[:, ::-1][:, :2].T
    np.testing.assert_allclose(pca.explained_variance, w[::-1][:2], rtol=1e-4)
    np.testing.assert_allclose(np.abs(pca.components @ top.T), np.eye(2), atol=1e-4)
    signs = np.sign(np.sum(pca.components * top, axis=1))
    np.testing.assert_allclose(xy["generated"], ((b - a.mean(0)) @ top.T) * signs, atol=1e-3)
    np.testing.assert_allclose(xy["original"].mean(0), 0.0, atol=1e-6)
    pca2, _ = project_on_originals({"original": a, "generated": b * 10 - 3})
    np.testing.assert_allclose(pca2.components, pca.components)
    # Pooled PCA (the old default) would be pulled towards the far-away generated set.
    from augdiff.analysis.pca import fit_pca

    pooled = fit_pca(np.concatenate([a, b]), 2)
    assert np.abs(pooled.components[0] @ top[0]) < 0.9


def test_rows_experiment_wiring(tmp_path, monkeypatch):
    """The table experiment runs every row as its own sub-experiment: rows other than
    baseline adopt baseline's edits, vanilla trains on real data only, dc reports baseline's
    result, and report.md holds the paper-layout table and the findings' directions."""
    from augdiff.config import load_config
    from augdiff.pipeline import run, stages

    seen = {}

    def fake(stage):
        def fn(config, outputs, units):
            row = os.path.basename(str(config.workdir))
            seen.setdefault(row, []).append(stage)
            if stage == "generate":
                seen[f"{row}:edits_store"] = str(
                    config.generator.overrides.diffusemix.edits_store)
                return {"store": str(tmp_path / row / "s"), "num_images": 20}
            if stage.startswith("train"):
                top1 = {"baseline": 0.30, "vanilla": 0.25, "random": 0.32}.get(row, 0.2)
                return {"test_top1_mean": top1, "test_top5_mean": 0.8, "num_seeds": 1,
                        "seeds": {"seed_0": {"test_top1": top1}}}
            return {}
        return fn

    for s in stages.STAGE_FUNCTIONS:
        monkeypatch.setitem(stages.STAGE_FUNCTIONS, s, fake(s))
    cfg = load_config(f"{REPO / 'augdiff' / 'configs' / 'exp_seed000_diffusemix.py'}:ci",
                      [f"workdir={tmp_path}", "rows=baseline,vanilla,random", "analyses="])
    out = run.run_experiment(cfg, log=lambda m: None)["rows"]
    assert seen["vanilla"] == ["prepare", "train_real", "report"]
    assert seen["baseline"] == ["prepare", "generate", "train_mixed", "report"]
    assert seen["baseline:edits_store"] == ""
    assert seen["random:edits_store"] == str(tmp_path / "baseline" / "generate/store/edits")
    assert out["rows"]["dc"]["alias_of"] == "baseline"
    md = open(out["report"]).read()
    assert "| Baseline | Con | 0.0 | 1.00 | 68.63 | 30.00 |" in md
    assert "| Vanilla | Con | 0.0 | 1.00 | 75.35 | 25.00 |" in md
    # DC below vanilla? gap −5 points; random below DC? gap −2: one seed, so no verdict.
    assert ("| DC falls below vanilla (`dc` < `vanilla`) | yes | -5.00 | — | 1 | "
            "**1 seed: no interval** |") in md
    assert ("| random falls below DC (`random` < `dc`) | yes | -2.00 | — | 1 | "
            "**1 seed: no interval** |") in md
    # Table 1's Fractal rows (mask 'original') make no edit.
    from augdiff.methods import diffusemix as DM

    dm_cfg = REPO / "augdiff" / "configs" / "diffusemix_cifar100.py"
    assert not DM.needs_edits(load_config(f"{dm_cfg}:fractal_0.20_lsf1.00"))
    assert DM.needs_edits(load_config(f"{dm_cfg}:baseline"))
    with pytest.raises(Exception, match="needs row 'baseline' first"):
        run.run_experiment(load_config(
            f"{REPO / 'augdiff' / 'configs' / 'exp_seed000_diffusemix.py'}:ci",
            [f"workdir={tmp_path / 'b'}", "rows=random,baseline", "analyses="]),
            log=lambda m: None)


@pytest.mark.slow
def test_ci_table_experiment_end_to_end(cifar_small, tmp_path):
    """The ``ci`` profile of the seed 000 table through ``augdiff run`` on real CIFAR-10
    images with the shipped EDM as the SDEdit editor: baseline edits once, the Fractal row
    makes no edit (it blends fractals online), SHB + fractal adopts baseline's edits, and
    report.md holds the table and the SHB measurement."""
    import json

    from augdiff.config import load_config
    from augdiff.pipeline import run

    cfg = load_config(f"{REPO / 'augdiff' / 'configs' / 'exp_seed000_diffusemix.py'}:ci", [
        f"workdir={tmp_path}", f"data.path={cifar_small}", "analyses=shb_measure"])
    out = run.run_experiment(cfg, log=lambda m: None)["rows"]
    assert set(out["rows"]) == {"baseline", "fractal_0.20_lsf0.80", "shb_fractal", "dc"}

    def gen(row):
        book = json.load(open(tmp_path / row / "stages.json"))
        return book["stages"]["generate"]["outputs"]

    assert gen("baseline")["summary"]["edits_summary"]["written"] == 20
    # the Fractal row trains online on the real images (fresh fractal per step): no store
    fractal = json.load(open(tmp_path / "fractal_0.20_lsf0.80" / "stages.json"))["stages"]
    assert "generate" not in fractal and "train_real" in fractal
    assert gen("shb_fractal")["summary"]["edits_summary"]["adopted"].endswith(
        "baseline/generate/store/edits")
    assert gen("shb_fractal")["num_images"] == 20
    md = open(out["report"]).read()
    assert "| SHB + fractal | Con | 0.20 | 1.00 | — |" in md and "## Analysis: shb_measure" in md
    st = out["analyses"]["shb_measure"]["stats"]["256: paper (P50, k=5 reflect)"]
    assert st["original_share_mean"] == pytest.approx(0.5, abs=0.02)
