"""Augmented conditioning (seed 001): augmentation statistics over many draws, p = 1 Dropout
equals the text-only path, long-tail counts, same-class partners, and ``augdiff generate``
into a resumable store with provenance (issue 6, Must-show 1)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from augdiff import distributed
from augdiff.methods import augcond as ac

N_DRAWS = 4000


def _keys(n: int, seed: int = 0) -> jax.Array:
    return jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i))(jnp.arange(n))


@pytest.mark.parametrize("alpha", [1.0, 0.4])
def test_pixel_cutmix_area_and_lambda(alpha):
    h = w = 32
    x1, x2 = jnp.zeros((h, w, 1)), jnp.ones((h, w, 1))
    out, box = jax.jit(jax.vmap(lambda k: ac.pixel_cutmix(k, x1, x2, alpha)))(_keys(N_DRAWS))
    out = np.asarray(out)
    # The pasted region is exactly the recorded box and its area is 1 - λ' (realised λ).
    area = out.mean(axis=(1, 2, 3))
    np.testing.assert_allclose(area, 1.0 - np.asarray(box["lam"]), atol=1e-6)
    boxes = np.asarray(out[..., 0] > 0.5)
    i = int(np.argmax(area))
    y0, y1, x0, x1_ = (int(box[k][i]) for k in ("y0", "y1", "x0", "x1"))
    assert boxes[i, y0:y1, x0:x1_].all() and boxes[i].sum() == (y1 - y0) * (x1_ - x0)
    # The sampled λ is Beta(α, α); the realised λ' >= λ up to flooring the side (clipping only
    # ever shrinks the box).
    assert stats.kstest(np.asarray(box["lam_sampled"]), stats.beta(alpha, alpha).cdf).pvalue > 1e-3
    side = np.floor(h * np.sqrt(1 - np.asarray(box["lam_sampled"])))
    assert np.all(np.asarray(box["lam"]) >= 1 - side**2 / (h * w) - 1e-6)


@pytest.mark.parametrize("alpha", [1.0, 0.4])
def test_embed_cutmix_block_and_lambda(alpha):
    d = 1024
    e1, e2 = jnp.zeros(d), jnp.ones(d)
    out, info = jax.jit(jax.vmap(lambda k: ac.embed_cutmix(k, e1, e2, alpha)))(_keys(N_DRAWS, 1))
    out = np.asarray(out)
    length, start = np.asarray(info["length"]), np.asarray(info["start"])
    np.testing.assert_array_equal(out.sum(axis=1), length)  # L dims taken from e₂ ...
    for r in range(0, N_DRAWS, 97):  # ... as one contiguous block starting at s
        np.testing.assert_array_equal(
            np.flatnonzero(out[r]), np.arange(start[r], start[r] + length[r])
        )
    assert np.all(start >= 0) and np.all(start + length <= d)
    np.testing.assert_allclose(np.asarray(info["lam"]), 1 - length / d, atol=1e-6)
    # λ' = 1 - round((1-λ)D)/D is within 1/(2D) of a Beta(α, α) draw.
    np.testing.assert_allclose(info["lam"], info["lam_sampled"], atol=0.5 / d + 1e-6)
    assert stats.kstest(np.asarray(info["lam"]), stats.beta(alpha, alpha).cdf).pvalue > 1e-3
    # Block positions are uniform: the start of a block of length L is U{0..D-L}.
    u = start / np.maximum(d - length, 1)
    assert stats.kstest(u[length < d - 8], "uniform").pvalue > 1e-3


@pytest.mark.parametrize("fn", [ac.pixel_mixup, ac.embed_mixup])
def test_mixup_coefficient(fn):
    alpha = 0.4
    k1, k2 = jax.random.split(jax.random.PRNGKey(3))
    x1 = jax.random.normal(k1, (8, 8, 3) if fn is ac.pixel_mixup else (32,))
    x2 = jax.random.normal(k2, x1.shape)
    out, info = jax.jit(jax.vmap(lambda k: fn(k, x1, x2, alpha)))(_keys(N_DRAWS, 2))
    lam = np.asarray(info["lam"])
    lam_b = lam.reshape((-1,) + (1,) * x1.ndim)
    np.testing.assert_allclose(
        out, lam_b * np.asarray(x1) + (1 - lam_b) * np.asarray(x2), atol=1e-5
    )
    assert stats.kstest(lam, stats.beta(alpha, alpha).cdf).pvalue > 1e-3
    assert abs(lam.mean() - 0.5) < 4 * np.sqrt(1 / (4 * (2 * alpha + 1)) / N_DRAWS)
    np.testing.assert_allclose(lam.var(), 1 / (4 * (2 * alpha + 1)), rtol=0.1)


def test_dropout_rate_and_degenerate_ends():
    d = 256
    e = jax.random.normal(jax.random.PRNGKey(4), (d,)) + 3.0
    p = 0.4
    out, dropped = jax.jit(jax.vmap(lambda k: ac.embed_dropout(k, e, p)))(_keys(400, 5))
    out = np.asarray(out)
    zero = out == 0
    n = zero.size
    assert abs(zero.mean() - p) < 4 * np.sqrt(p * (1 - p) / n)  # Bernoulli(p) drop rate
    np.testing.assert_allclose(np.asarray(dropped), zero.mean(axis=1), atol=1e-6)
    kept = np.broadcast_to(np.asarray(e) / (1 - p), out.shape)[~zero]
    np.testing.assert_allclose(out[~zero], kept, rtol=1e-6)  # inverted dropout scaling
    np.testing.assert_allclose(out.mean(axis=0), np.asarray(e), rtol=0.25)  # E[ẽ] = e
    # Dims are dropped independently: no correlation between neighbouring dims.
    assert abs(np.corrcoef(zero[:, :-1].ravel(), zero[:, 1:].ravel())[0, 1]) < 0.03
    k = jax.random.PRNGKey(0)
    np.testing.assert_array_equal(ac.embed_dropout(k, e, 0.0)[0], e)
    assert not np.any(np.asarray(ac.embed_dropout(k, e, 1.0)[0]))


def test_augmentation_spec():
    a = ac.Augmentation.parse("Embed-CutMix+dropout", alpha=0.5, dropout_p=0.4)
    assert (a.mix, a.alpha, a.dropout, a.name) == ("embed_cutmix", 0.5, 0.4, "embed_cutmix+dropout")
    assert ac.Augmentation.parse("none").name == "none" and not ac.Augmentation().needs_partner
    assert ac.Augmentation.parse("dropout", dropout_p=1.0).dropout == 1.0
    with pytest.raises(ValueError, match="unknown augmentation"):
        ac.Augmentation.parse("rotate")
    with pytest.raises(ValueError, match="at most one mix"):
        ac.Augmentation.parse("pixel_cutmix+embed_mixup")
    with pytest.raises(ValueError, match="dropout p"):
        ac.Augmentation(dropout=1.5)


def test_long_tail_counts_plan_and_partners():
    counts = np.array([50, 20, 5, 1])
    bal = ac.generation_counts(counts, "balance")
    np.testing.assert_array_equal(counts + bal, 50)  # every class ends at the head count
    np.testing.assert_array_equal(
        ac.generation_counts(counts, "balance", target=30), [0, 10, 25, 29]
    )
    np.testing.assert_array_equal(ac.generation_counts(counts, "multiple", multiple=3), 3 * counts)
    np.testing.assert_array_equal(ac.generation_counts(counts, "per_class", per_class=7), 7)
    with pytest.raises(ValueError, match="count mode"):
        ac.generation_counts(counts, "oversample")

    labels = np.repeat(np.arange(4), counts)
    plan = ac.plan_examples(labels, bal)
    assert len(plan) == bal.sum() and [p["example"] for p in plan] == list(range(len(plan)))
    for c in range(4):  # parents cycle over the class's real images (each used equally)
        parents = [p["parent"] for p in plan if p["label"] == c]
        assert all(labels[r] == c for r in parents)
        used = np.bincount(parents, minlength=len(labels))[labels == c]
        assert used.max() - used.min() <= 1
    keys = _keys(len(plan), 9)
    rows = np.array([p["parent"] for p in plan])
    partners = ac.same_class_partners(keys, rows, labels)
    np.testing.assert_array_equal(labels[partners], labels[rows])
    multi = counts[labels[rows]] > 1
    assert np.all(partners[multi] != rows[multi])  # never the image itself when avoidable
    assert np.all(partners[~multi] == rows[~multi])
    np.testing.assert_array_equal(partners, ac.same_class_partners(keys, rows, labels))
    # Uniform over the other members: class 2's 5 images, partners of one parent.
    r = int(np.flatnonzero(labels == 2)[0])
    many = ac.same_class_partners(_keys(2000, 11), np.full(2000, r), labels)
    freq = np.bincount(many, minlength=len(labels))[labels == 2]
    assert freq[0] == 0 and stats.chisquare(freq[1:]).pvalue > 1e-3


@pytest.fixture(scope="module")
def unclip(tmp_path_factory):
    from augdiff.sd import loading, tiny

    path = tiny.make_tiny_sd(
        tmp_path_factory.mktemp("unclip") / "m", kind="unclip", formats=("flax",)
    )
    return path, loading.load_sd(path)


@pytest.mark.slow
def test_dropout_one_equals_text_only_path(unclip):
    """Must-show 1: with p = 1 the images do not depend on the conditioning images at all and
    equal generation from the null image embedding (zeros, built here); with p = 0 the same
    path gives different images for different conditioning images."""
    _, (comps, params) = unclip
    from augdiff.sd import pipelines

    mesh = distributed.make_mesh()
    rng = np.random.default_rng(0)
    imgs_a = rng.uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
    imgs_b = rng.uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
    keys = _keys(4, 21)
    prompts = pipelines.encode_prompts(comps, params, ["a photo of a cat"] * 4)
    kw = dict(guidance_scale=10.0, num_steps=2, height=16, width=16, mesh=mesh)

    def through_the_method(aug, x1, x2):
        e, info = ac.augmented_embeddings(comps, params, aug, keys, x1, x2, mesh=mesh)
        return ac.generate_images(comps, params, e, prompts, keys, **kw), e, info

    drop_all = ac.Augmentation.parse("embed_cutmix+dropout", dropout_p=1.0)
    out_a, e_a, info = through_the_method(drop_all, imgs_a, imgs_b)
    out_b, _, _ = through_the_method(drop_all, imgs_b, imgs_a)
    assert not np.any(e_a) and np.all(info["dropped"] == 1.0)
    null = np.zeros((4, comps.image_embed_dim), np.float32)  # the null image embedding
    np.testing.assert_array_equal(
        out_a, ac.generate_images(comps, params, null, prompts, keys, **kw)
    )
    np.testing.assert_array_equal(out_b, out_a)
    keep = ac.Augmentation()
    keep_a, e_keep, _ = through_the_method(keep, imgs_a, None)
    keep_b, _, _ = through_the_method(keep, imgs_b, None)
    assert np.abs(e_keep).max() > 0
    assert np.abs(keep_a - keep_b).max() > 1e-3  # the image matters when nothing is dropped
    assert np.abs(keep_a - out_a).max() > 1e-3


@pytest.mark.torch
def test_clip_preprocessing_matches_transformers_clip_image_processor():
    """CLIPImageProcessor: shorter side → 224 (bicubic), centre crop 224, normalise; on
    non-square and non-224 inputs. transformers resizes a uint8 PIL image (rounded to 1/255),
    so the bound is 1.5/255 in [0, 1] units divided by the smallest CLIP std."""
    from transformers import CLIPImageProcessor

    from augdiff.sd.unclip import clip_preprocess

    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    proc = CLIPImageProcessor(
        size={"shortest_edge": 224},
        crop_size={"height": 224, "width": 224},
        image_mean=mean,
        image_std=std,
    )
    bound = 1.5 / 255 / min(std)
    for h, w in ((40, 56), (300, 200), (32, 32), (224, 300), (500, 230)):
        yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
        img = np.stack([np.sin(6 * yy + 3 * xx), np.cos(5 * xx), yy * xx], -1) * 0.5 + 0.5
        img = np.round(img * 255).astype(np.uint8)
        ref = proc(images=[img], return_tensors="np").pixel_values[0].transpose(1, 2, 0)
        ours = np.asarray(
            clip_preprocess(jnp.asarray(img[None] / 255.0, jnp.float32), 224, mean, std)
        )
        assert ours.shape == (1, 224, 224, 3)
        d = np.abs(ours[0] - ref)
        assert d.max() <= bound and d.mean() < 0.2 * bound, ((h, w), d.max(), d.mean())


@pytest.mark.torch
@pytest.mark.slow
def test_clip_image_embeds_use_the_processor_on_non_square_input(unclip):
    """The image encoder sees what CLIPImageProcessor makes of a non-square image (the crop
    keeps the centre): our embeddings equal the encoder applied to transformers' pixels."""
    from transformers import CLIPImageProcessor

    from augdiff.sd import pipelines

    _, (comps, params) = unclip
    size = comps.clip_image_size
    proc = CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=comps.clip_image_mean,
        image_std=comps.clip_image_std,
    )
    yy, xx = np.meshgrid(np.linspace(0, 1, 48), np.linspace(0, 1, 80), indexing="ij")
    img = np.stack([np.sin(6 * yy + 9 * xx), np.cos(11 * xx), yy * xx], -1) * 0.5 + 0.5
    img = np.round(img * 255).astype(np.uint8)
    ours = np.asarray(pipelines.clip_image_embeds(comps, params, img[None] / 127.5 - 1.0))
    pix = proc(images=[img], return_tensors="np").pixel_values.transpose(0, 2, 3, 1)
    p = params["image_encoder"]
    pooled = comps.image_encoder.apply(
        {"params": {"vision_model": p["vision_model"]}}, jnp.asarray(pix), return_dict=False
    )[1]
    ref = np.asarray(pooled) @ np.asarray(p["visual_projection"]["kernel"])
    np.testing.assert_allclose(ours, ref, atol=0.05 * np.abs(ref).max())


@pytest.fixture
def augcond_spy(unclip, cifar_zip, tmp_path, repo_root, monkeypatch):
    """``ac.generate`` with the CLIP image encoder replaced by ``flatten`` (so the recorded
    embeddings ARE the encoder's input) and the unCLIP sampler by a recorder of the image
    embeddings it is handed."""
    from augdiff.config import load_config
    from augdiff.data.sources import open_real_source
    from augdiff.data.store import SyntheticStore
    from augdiff.sd import pipelines

    path, _ = unclip
    handed = []

    def flatten_encoder(components, params, images, normalize=False):
        return jnp.reshape(jnp.asarray(images, jnp.float32), (images.shape[0], -1))

    def recorder(components, params, image_embeds, key, *, height, width, **kw):
        handed.append(np.asarray(image_embeds))
        return np.zeros((len(image_embeds), height, width, 3), np.float32)

    ac._conditioning.clear_cache()
    monkeypatch.setattr(pipelines, "clip_image_embeds", flatten_encoder)
    monkeypatch.setattr(pipelines, "unclip_variation", recorder)

    def run(name, overrides):
        handed.clear()
        cfg = load_config(
            str(repo_root / "augdiff/configs/augcond_cifar10.py:fewshot_smoke"),
            [
                f"workdir={tmp_path / name}",
                f"data.path={cifar_zip}",
                f"model.path={path}",
                "augcond.batch_size=8",
                *overrides,
            ],
        )
        ac.generate(cfg)
        store = SyntheticStore(tmp_path / name / "synthetic")
        provs = sorted((store.provenance(i) for i in range(len(store))), key=lambda p: p["example"])
        real = open_real_source(cfg.data, "train")

        def x(i):  # the image as the method hands it to the encoder: uint8 / 127.5 − 1
            return real[int(i)]["image"].astype(np.float32) / 127.5 - 1.0

        return np.concatenate(handed), provs, x

    yield run
    ac._conditioning.clear_cache()


@pytest.mark.slow
def test_pixel_cutmix_is_what_the_clip_encoder_sees(augcond_spy):
    e, provs, x = augcond_spy("pix", ["augcond.augmentation=pixel_cutmix"])
    assert len(e) == len(provs) == 20
    mixed = 0
    for r, p in enumerate(provs):
        b = p["params"]
        x1, x2 = x(p["parent"]), x(p["partner"])
        m = np.zeros(x1.shape[:2], bool)
        m[b["y0"] : b["y1"], b["x0"] : b["x1"]] = True  # the CutMix box (Yun et al. 2019)
        np.testing.assert_allclose(e[r], np.where(m[..., None], x2, x1).ravel(), atol=1e-6)
        mixed += m.any() and np.abs(e[r] - x1.ravel()).max() > 0
    assert mixed >= 10


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["block", "subset"])
def test_embedding_cutmix_is_what_the_unclip_model_gets(augcond_spy, mode):
    e, provs, x = augcond_spy(
        f"emb_{mode}", ["augcond.augmentation=embed_cutmix", f"augcond.embed_cutmix_mode={mode}"]
    )
    mixed = 0
    for r, p in enumerate(provs):
        e1, e2 = x(p["parent"]).ravel(), x(p["partner"]).ravel()
        length = p["params"]["length"]
        from2 = (e[r] == e2) & (e1 != e2)
        if mode == "block":
            s = p["params"]["start"]
            want = e1.copy()
            want[s : s + length] = e2[s : s + length]
            np.testing.assert_array_equal(e[r], want)
        else:
            assert ((e[r] == e2) | (e[r] == e1)).all()
            ties = int((e1 == e2).sum())
            assert length - ties <= int(from2.sum()) <= length
        mixed += length > 0
        assert p["params"]["lam"] == pytest.approx(1 - length / e1.size, abs=1e-6)
    assert mixed >= 10


@pytest.mark.slow
@pytest.mark.parametrize("rescale", [True, False])
def test_dropout_rate_in_what_the_unclip_model_gets(augcond_spy, rescale):
    p_drop = 0.4
    e, provs, x = augcond_spy(
        f"drop_{rescale}",
        [
            "augcond.augmentation=dropout",
            f"augcond.dropout_p={p_drop}",
            f"augcond.dropout_rescale={rescale}",
        ],
    )
    x1 = np.stack([x(p["parent"]).ravel() for p in provs])
    zero = e == 0
    n = zero.size  # Bernoulli(p) drop rate, 4σ
    assert abs(zero.mean() - p_drop) < 4 * np.sqrt(p_drop * (1 - p_drop) / n)
    scale = 1 / (1 - p_drop) if rescale else 1.0
    np.testing.assert_allclose(e[~zero], (x1 * scale)[~zero], rtol=1e-6)


@pytest.mark.slow
def test_generate_into_store_with_provenance_and_resume(unclip, cifar_zip, tmp_path, repo_root):
    from augdiff.config import load_config
    from augdiff.data.store import SyntheticStore

    path, _ = unclip
    cfg = load_config(
        str(repo_root / "augdiff/configs/augcond_cifar10.py:longtail_smoke"),
        [
            f"workdir={tmp_path}",
            f"data.path={cifar_zip}",
            f"model.path={path}",
            "data.per_class=3",
            "data.imbalance_factor=3.0",
            "augcond.batch_size=8",
        ],
    )
    assert cfg.augcond.guidance == 2.0 and cfg.augcond.steps == 2
    first = ac.generate(cfg)
    # LT profile 3, 2, ..., 1 per class; balance brings every class to 3.
    per_class = np.array(first["planned_per_class"])
    assert per_class[0] == 0 and per_class[-1] == 2 and first["written"] == per_class.sum()
    store = SyntheticStore(tmp_path / "synthetic")
    assert len(store) == per_class.sum()
    np.testing.assert_array_equal(np.bincount(store.labels, minlength=10), per_class)
    prov = store.provenance(0)
    assert prov["method"] == "augcond" and prov["augmentation"] == "embed_cutmix+dropout"
    assert prov["dropout_p"] == 0.4 and prov["guidance"] == 2.0 and prov["seed"] == 0
    assert prov["partner"] is not None and prov["partner"] != prov["parent"]
    assert set(prov["params"]) >= {"lam", "start", "length", "dropped"}
    rec = store[0]
    assert rec["image"].shape == (32, 32, 3) and rec["source"] == 1
    again = ac.generate(cfg)  # resumed: every key is already stored
    assert again["written"] == 0 and len(SyntheticStore(tmp_path / "synthetic")) == len(store)


def test_training_config_mixes_half_synthetic(repo_root):
    from augdiff.config import load_config

    for variant in ("fewshot_train", "longtail_smoke_train"):
        cfg = load_config(str(repo_root / f"augdiff/configs/augcond_cifar10.py:{variant}"))
        assert (
            cfg.synthetic.schedule.kind == "constant" and float(cfg.synthetic.schedule.rho) == 0.5
        )
        assert cfg.synthetic.path.endswith("synthetic")
    few = load_config(str(repo_root / "augdiff/configs/augcond_cifar10.py:fewshot"))
    assert (few.augcond.guidance, few.augcond.steps, few.data.per_class) == (10.0, 30, 10)
    lt = load_config(str(repo_root / "augdiff/configs/augcond_cifar10.py:longtail"))
    assert (lt.augcond.guidance, lt.augcond.count_mode) == (2.0, "balance")
