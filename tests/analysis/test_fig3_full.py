"""Seed 000 Fig. 3 at any scale (issue 26, item 4): panel (b) plots the fractals the hybrids
were blended with, InstructPix2Pix generations are made with the row's editor and DiffuseMix's
prompts, and CLIP is the one named (a path that does not load is a one-line ConfigError).

References are written here: the hybrid's fractal recovered from ``C = (1 − λ) H + λ F`` with a
hand-built mask, CLIP embeddings from transformers' own ``get_image_features`` and a numpy PCA,
the prompt list spelt out."""

from __future__ import annotations

import os
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from augdiff.analysis import fig3
from augdiff.config import ConfigError, load_config
from augdiff.methods import edits, hybrids
from augdiff.sd import pipelines

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "augdiff" / "configs" / "diffusemix_cifar100.py")
N = 3  # originals in the figure
LAM = 0.2


def _top_half_mask(h: int, w: int) -> np.ndarray:
    """DiffuseMix's vertical concatenation with a hard seam: the original on rows < h/2."""
    m = np.zeros((h, w, 1), np.float32)
    m[: h // 2] = 1.0
    return m


def _recover_fractals(c: np.ndarray, original: np.ndarray, generated: np.ndarray) -> np.ndarray:
    """F = (C − (1 − λ) H) / λ with H = M ⊙ I + (1 − M) ⊙ Î (M the top-half mask)."""
    m = _top_half_mask(*original.shape[1:3])
    h = m * original + (1.0 - m) * generated
    return (c - (1.0 - LAM) * h) / LAM


@pytest.mark.parametrize("policy", ["offline", "online"])
def test_pair_fractals_are_the_ones_diffusemix_blends(policy):
    rng = np.random.default_rng(0)
    o = rng.uniform(-1, 1, (6, 8, 8, 3)).astype(np.float32)
    g = rng.uniform(-1, 1, (6, 8, 8, 3)).astype(np.float32)
    bank = jnp.asarray(rng.uniform(-1, 1, (5, 8, 8, 3)).astype(np.float32))
    ids = jnp.asarray([3, 14, 15, 92, 65, 35], jnp.int32)
    spec = hybrids.DiffuseMixSpec(orientation="vertical", ramp=0.0, lam=LAM, policy=policy)
    key = jax.random.PRNGKey(7)
    c, _ = hybrids.diffusemix(key, jnp.asarray(o), jnp.asarray(g), ids, bank, spec=spec, epoch=4)
    want = _recover_fractals(np.asarray(c), o, g)
    got = np.asarray(hybrids.pair_fractals(key, ids, bank, 8, 8, policy=policy, epoch=4))
    np.testing.assert_allclose(got, want, atol=2e-5)
    # every recovered fractal is one of the bank's images
    d = np.abs(want[:, None] - np.asarray(bank)[None]).max(axis=(2, 3, 4))
    assert (d.min(axis=1) < 2e-5).all()
    if policy == "online":  # another epoch draws other fractals for some pair
        other = np.asarray(hybrids.pair_fractals(key, ids, bank, 8, 8, policy=policy, epoch=5))
        assert not np.array_equal(other, got)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> pathlib.Path:
    """A 16² image folder: 2 classes × 2 training images, smooth random colours."""
    root = tmp_path_factory.mktemp("fig3data")
    rng = np.random.default_rng(3)
    for cls in ("cat", "dog"):
        (root / "train" / cls).mkdir(parents=True)
        for k in range(2):
            base = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
            Image.fromarray(base).resize((16, 16), Image.BILINEAR).save(
                root / "train" / cls / f"{cls}{k}.png")
    return root


def _row(workdir, data, *overrides):
    return load_config(f"{CONFIG}:smoke", [
        f"workdir={workdir}", f"data.path={data}", "data.per_class=0", "data.image_size=16",
        "diffusemix.prompts=snowy|Autumn", "diffusemix.resolution=16", "diffusemix.steps=1",
        "diffusemix.batch_size=4", "diffusemix.fractal_bank_size=4",
        "diffusemix.hybrid.orientation=vertical", "diffusemix.hybrid.ramp=0.0",
        "diffusemix.hybrid.lam_min=-1.0", "diffusemix.hybrid.lam_max=-1.0",
        f"diffusemix.hybrid.lam={LAM}", "diffusemix.hybrid.label_scaling=False",
        "progress=False", *overrides])


def _table(workdir, **fig3_opts):
    opts = {"max_images": N, "row": "baseline", "tiny": True, "clip": "",
            "prompts": "Autumn|sunset"}
    opts.update(fig3_opts)
    return ml_collections.ConfigDict({"workdir": str(workdir), "fig3": opts})


@pytest.fixture(scope="module")
def row_cfg(data_dir, tmp_path_factory):
    return _row(tmp_path_factory.mktemp("row"), data_dir)


@pytest.fixture(scope="module")
def spied(row_cfg, tmp_path_factory, monkeypatch_module):
    """make_fig3_sets with the tiny InstructPix2Pix of the row, recording what reached the
    text encoder and the editor."""
    seen = {"encoded": [], "edits": 0, "load": []}
    enc, edit, load = pipelines.encode_prompts, edits.edit_images, edits.load_ip2p

    def spy_enc(components, params, prompts):
        seen["encoded"].append(list(prompts))
        return enc(components, params, prompts)

    def spy_edit(*a, **k):
        seen["edits"] += 1
        seen["steps"], seen["resolution"] = k["num_steps"], k["resolution"]
        return edit(*a, **k)

    def spy_load(cfg, workdir, seed):
        seen["load"].append((str(cfg.model), bool(cfg.tiny), workdir))
        return load(cfg, workdir, seed)

    monkeypatch_module.setattr(pipelines, "encode_prompts", spy_enc)
    monkeypatch_module.setattr(edits, "edit_images", spy_edit)
    monkeypatch_module.setattr(edits, "load_ip2p", spy_load)
    table = _table(tmp_path_factory.mktemp("table"))
    sets = fig3.make_fig3_sets(table, {"baseline": {"generate_config": row_cfg}}, lambda m: None)
    return sets, seen


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_ip2p_generations_use_the_rows_editor_and_diffusemix_prompts(spied, row_cfg):
    sets, seen = spied
    # single prompt: the row's first; then fig3.prompts
    assert sets.editor == "ip2p" and sets.single == "snowy"
    assert sets.prompts == ("snowy", "Autumn", "sunset")
    assert seen["encoded"][0] == ["snowy", "Autumn", "sunset"]  # then the pipeline's ""
    assert seen["load"] == [("", True, str(row_cfg.workdir))]  # the row's (tiny) editor
    assert seen["steps"] == 1 and seen["resolution"] == 16
    assert seen["edits"] == 3  # one batch of N per prompt
    for p in sets.prompts:
        assert sets.generated[p].shape == (N, 16, 16, 3)
        assert np.isfinite(sets.generated[p]).all()
        # stored-size quantisation, as the edit stage writes them
        q = (sets.generated[p] + 1.0) * 127.5
        np.testing.assert_allclose(q, np.rint(q), atol=1e-3)
    # the prompts reach the editor: different prompts, different edits
    assert not np.array_equal(sets.generated["snowy"], sets.generated["sunset"])


def test_panel_b_fractals_are_the_hybrids_own(spied):
    sets, _ = spied
    want = np.concatenate([
        _recover_fractals(sets.concatenated[p], sets.original[sets.kept[p]], sets.generated[p])
        for p in sets.prompts])
    assert sets.fractals.shape == want.shape == (N * 3, 16, 16, 3)
    np.testing.assert_allclose(sets.fractals, want, atol=1e-4)
    # one fractal per concatenation, not one per original
    assert sets.fractals.shape[0] == sum(len(sets.pair_ids[p]) for p in sets.prompts)


def _clip_features(folder: str, images: np.ndarray) -> np.ndarray:
    """CLIP image features by transformers itself: [-1, 1] → [0, 1], bicubic resize, CLIP's
    mean/std, get_image_features."""
    from transformers import FlaxCLIPModel

    model = FlaxCLIPModel.from_pretrained(folder)
    size = model.config.vision_config.image_size
    x = (jnp.asarray(images) + 1.0) / 2.0
    x = jax.image.resize(x, (len(x), size, size, 3), method="bicubic")
    mean = jnp.asarray([0.48145466, 0.4578275, 0.40821073])
    std = jnp.asarray([0.26862954, 0.26130258, 0.27577711])
    x = ((x - mean) / std).transpose(0, 3, 1, 2)
    return np.asarray(model.get_image_features(pixel_values=x), np.float64)


def test_run_fig3_with_given_clip_and_ip2p(row_cfg, spied, tmp_path):
    from augdiff.sd import tiny

    clip_dir = str(tmp_path / "clip")
    tiny.make_tiny_clip(clip_dir, seed=5)
    os.remove(os.path.join(clip_dir, "AUGDIFF_TINY_RANDOM_WEIGHTS.txt"))  # "real" weights
    table = _table(tmp_path / "t", clip=clip_dir)
    out = fig3.run_fig3(table, {"baseline": {"generate_config": row_cfg}}, lambda m: None)
    assert out["clip"] == clip_dir and not out["clip_random_weights"]
    assert out["editor"] == "ip2p" and out["prompts"] == ["snowy", "Autumn", "sunset"]
    assert out["single"] == "snowy" and "strengths" not in out
    text = "\n".join(out["report_lines"])
    assert "σ_start" not in text and "RANDOM" not in text
    assert "InstructPix2Pix" in text and "“snowy”" in text and "“sunset”" in text
    assert "single prompt: “snowy”" in text
    assert out["stats"]["generated_all"]["n"] == 3 * N
    assert out["stats"]["fractal"]["n"] == 3 * N
    assert os.path.isfile(out["plot"])
    # PCA on that CLIP's embeddings of the originals (numpy eigendecomposition)
    e = _clip_features(clip_dir, spied[0].original)  # the same originals (seeded subset)
    w = np.linalg.eigvalsh(np.cov(e.T))[::-1]
    np.testing.assert_allclose(out["explained_variance_ratio"], w[:2] / w.sum(), rtol=1e-3)


def test_tiny_clip_keeps_the_random_caveat(row_cfg, tmp_path):
    table = _table(tmp_path, prompts="snowy")
    out = fig3.run_fig3(table, {"baseline": {"generate_config": row_cfg}}, lambda m: None)
    out_lines = "\n".join(out["report_lines"])
    assert out["clip"] == "tiny-random" and out["clip_random_weights"]
    assert "RANDOM weights" in out_lines
    assert out["prompts"] == ["snowy"]


@pytest.mark.parametrize("case", ["missing", "garbage", "empty"])
def test_bad_clip_is_one_line_config_error_before_generation(row_cfg, tmp_path, monkeypatch,
                                                             case):
    def boom(*a, **k):
        raise AssertionError("generation started before CLIP was checked")

    monkeypatch.setattr(edits, "load_ip2p", boom)
    monkeypatch.setattr(fig3, "open_real_source", boom)
    if case == "missing":
        opts = {"clip": str(tmp_path / "no_such_clip")}
    elif case == "garbage":
        bad = tmp_path / "bad_clip"
        bad.mkdir()
        (bad / "config.json").write_text("{ not json")
        opts = {"clip": str(bad)}
    else:
        opts = {"clip": "", "tiny": False}
    with pytest.raises(ConfigError) as e:
        fig3.run_fig3(_table(tmp_path / "t", **opts),
                      {"baseline": {"generate_config": row_cfg}}, lambda m: None)
    msg = str(e.value)
    assert "fig3.clip" in msg and "\n" not in msg


def test_unknown_row_is_a_config_error(row_cfg, tmp_path):
    with pytest.raises(ConfigError, match="fig3.row"):
        fig3.run_fig3(_table(tmp_path, row="nope"), {"baseline": {"generate_config": row_cfg}},
                      lambda m: None)


def test_black_edits_are_dropped_with_their_hybrids_and_fractals(row_cfg, tmp_path, monkeypatch):
    """An edit the editor returns black is dropped as the edit stage drops it: its generation,
    its concatenation and its fractal leave the figure together."""
    def fake_edit(components, params, images, embeds, keys, **k):
        rng = np.random.default_rng(int(np.asarray(jax.random.key_data(keys)).sum()) % 2**32)
        out = rng.uniform(0.2, 1.0, (len(images), 16, 16, 3)).astype(np.float32)
        out[1] = 0.0  # the second original's edit is black for every prompt
        return out

    monkeypatch.setattr(edits, "edit_images", fake_edit)
    s = fig3.make_fig3_sets(_table(tmp_path), {"baseline": {"generate_config": row_cfg}},
                            lambda m: None)
    assert s.dropped == 3
    for p in s.prompts:
        assert list(s.kept[p]) == [0, 2] and len(s.generated[p]) == 2
        assert len(s.concatenated[p]) == 2 and s.generated[p].min() > -0.7
    want = np.concatenate([
        _recover_fractals(s.concatenated[p], s.original[s.kept[p]], s.generated[p])
        for p in s.prompts])
    np.testing.assert_allclose(s.fractals, want, atol=1e-4)
    assert [list(s.pair_ids[p]) for p in s.prompts] == [[0, 6], [1, 7], [2, 8]]


def test_edm_row_keeps_strengths_as_prompts(data_dir, tmp_path):
    """The EDM SDEdit editor: the "prompts" are strengths σ_start (the table's first), and
    panel (b) still plots the hybrids' own fractals."""
    from augdiff.config import SHIPPED_GENERATOR, resolve_path

    row = _row(tmp_path / "row", data_dir, "diffusemix.editor=edm",
               f"diffusemix.edm.workdir={resolve_path(SHIPPED_GENERATOR)}",
               "diffusemix.edm.sigma_start=2.0", "diffusemix.edm.steps=2")
    table = _table(tmp_path / "t", strengths="1")
    rows = {"baseline": {"generate_config": row}}
    s = fig3.make_fig3_sets(table, rows, lambda m: None)
    assert s.editor == "edm" and s.prompts == ("2", "1") and s.single == "2"
    want = np.concatenate([_recover_fractals(s.concatenated[p], s.original, s.generated[p])
                           for p in s.prompts])
    np.testing.assert_allclose(s.fractals, want, atol=1e-4)
    out = fig3.run_fig3(table, rows, lambda m: None)
    text = "\n".join(out["report_lines"])
    assert out["strengths"] == ["2", "1"] and "σ_start ∈ {2, 1}" in text
    assert "InstructPix2Pix" not in text and "RANDOM weights" in text
