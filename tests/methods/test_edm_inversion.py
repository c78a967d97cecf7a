"""Diffusion Inversion on a class-conditional EDM (the seed 003 analog) against definitions
written here from the paper: what the inverted vector replaces (the one-hot reaching
``map_label``), per-image independence of the inversion (B images together = B alone),
the stage-2 perturbation ĉ = 0.9 c_i + 0.1 c_j + 0.1 ε, seed 001's mixes, mean-vector CFG,
the variant grid, and the verified group files."""

from __future__ import annotations

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from augdiff.config import ConfigError
from augdiff.edm.core import EDMConfig
from augdiff.edm.model import make_net_apply
from augdiff.methods import edm_inversion as E
from augdiff.models.songunet import SongUNet, songunet_config

K = 3  # classes of the tiny generator
SIZE = 8
REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gen():
    """A tiny random class-conditional SongUNet in the shape ``open_generator`` returns."""
    model = SongUNet(**songunet_config("tiny", img_resolution=SIZE, in_channels=3,
                                       out_channels=3, label_dim=K, model_channels=8,
                                       channel_mult=(1, 2), num_blocks=1))
    x = jnp.zeros((1, SIZE, SIZE, 3))
    params = model.init(jax.random.PRNGKey(0), x, jnp.zeros((1,)),
                        class_labels=jnp.zeros((1,), jnp.int32))["params"]
    # EDM zero-initialises the output layers; perturb every weight so the label has an effect
    leaves, tree = jax.tree_util.tree_flatten(params)
    leaves = [v + 0.2 * jax.random.normal(jax.random.PRNGKey(i), v.shape)
              for i, v in enumerate(leaves)]
    params = jax.tree_util.tree_unflatten(tree, leaves)
    return dict(net_apply=make_net_apply(model), params=params, edm=EDMConfig(),
                num_classes=K, size=SIZE, image_shape=(SIZE, SIZE, 3), checkpoint="tiny",
                step=1, class_conditional=True, mode="dm")


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def test_one_hot_vector_is_the_class_label_the_network_was_trained_with(gen):
    """The inverted vector takes the one-hot's place: D(x; σ, e_c) with a float one-hot equals
    D(x; σ, c) with the integer label (the network's own class path)."""
    from augdiff.edm.core import denoise

    x = jnp.asarray(_images(3), jnp.float32) / 127.5 - 1
    sigma = jnp.array([0.3, 1.0, 5.0])
    labels = jnp.array([0, 2, 1])
    by_int = denoise(gen["net_apply"], gen["params"], x, sigma, {"class": labels})
    by_vec = denoise(gen["net_apply"], gen["params"], x, sigma,
                     {"class": jax.nn.one_hot(labels, K)})
    np.testing.assert_allclose(np.asarray(by_vec), np.asarray(by_int), atol=1e-5)
    other = denoise(gen["net_apply"], gen["params"], x, sigma,
                    {"class": jax.nn.one_hot(jnp.array([1, 0, 2]), K)})
    assert float(jnp.abs(other - by_int).max()) > 1e-3  # the label matters


def test_loss_is_edm_eq8_with_the_vector(gen):
    """λ(σ)‖D(x + n; σ, c) − x‖² averaged over pixels, λ = (σ² + σ_d²)/(σ σ_d)², written out
    here with the preconditioning of EDM Table 1."""
    x = jnp.asarray(_images(2), jnp.float32) / 127.5 - 1
    v = jnp.asarray(np.random.default_rng(1).normal(size=(2, K)), jnp.float32)
    sigma = jnp.array([0.5, 2.0])
    n = jnp.asarray(np.random.default_rng(2).normal(size=x.shape), jnp.float32) * sigma[:, None,
                                                                                       None, None]
    got = E.inversion_loss(gen["net_apply"], gen["params"], gen["edm"], v, x, sigma, n)
    sd = 0.5
    s = sigma[:, None, None, None]
    c_skip, c_out = sd**2 / (s**2 + sd**2), s * sd / jnp.sqrt(s**2 + sd**2)
    c_in, c_noise = 1 / jnp.sqrt(s**2 + sd**2), jnp.log(sigma) / 4
    f = gen["net_apply"](gen["params"], c_in * (x + n), c_noise, {"class": v})
    d = c_skip * (x + n) + c_out * f
    want = (sigma**2 + sd**2) / (sigma * sd) ** 2 * jnp.mean((d - x) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5)


def test_inverting_together_equals_inverting_alone_and_lowers_the_loss(gen):
    """The batch objective is the sum of per-image losses with per-image randomness
    (fold_in(fold_in(key, id), step)), so a vector's path does not depend on its group."""
    imgs, labels, ids = _images(4), np.array([0, 1, 2, 0]), np.arange(4)
    kw = dict(steps=6, save_steps=(3, 6), learning_rate=0.03, weight_decay=0.01,
              init="torch_linear", seed=0)
    together, _ = E.invert_group(gen, imgs, labels, ids, **kw)
    alone = [E.invert_group(gen, imgs[i:i + 1], labels[i:i + 1], ids[i:i + 1], **kw)[0]
             for i in range(4)]
    assert sorted(together) == [3, 6]
    for step in (3, 6):
        np.testing.assert_allclose(together[step], np.concatenate([a[step] for a in alone]),
                                   rtol=1e-4, atol=1e-6)
    # many more steps lower the loss at fixed draws (the vectors learn the images)
    long, _ = E.invert_group(gen, imgs, labels, ids, steps=200, save_steps=(), learning_rate=0.1,
                             weight_decay=0.0, init="torch_linear", seed=0)
    x = jnp.asarray(imgs, jnp.float32) / 127.5 - 1
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(7), i))(jnp.arange(4))
    total = {"init": 0.0, "inverted": 0.0}
    start = E.initial_vectors(labels, ids, K, init="torch_linear", seed=0)
    for rep in range(16):
        sigma, n = E.step_noise(keys, rep, x.shape[1:], gen["edm"])
        for name, v in (("init", start), ("inverted", long[200])):
            total[name] += float(jnp.sum(E.inversion_loss(
                gen["net_apply"], gen["params"], gen["edm"], jnp.asarray(v), x, sigma, n)))
    assert total["inverted"] < total["init"]


def test_torch_linear_init_is_uniform_in_one_over_root_fan_in():
    v = E.initial_vectors(np.zeros(500, int), np.arange(500), 10, init="torch_linear", seed=0,
                          fan_in=100)
    assert v.shape == (500, 10) and np.abs(v).max() <= 0.1
    assert np.abs(v).max() > 0.099 and abs(float(v.mean())) < 0.01
    np.testing.assert_array_equal(E.initial_vectors(np.array([2, 0]), np.arange(2), 3,
                                                    init="class", seed=0),
                                  [[0, 0, 1], [1, 0, 0]])


def test_di_perturbation_is_point_nine_point_one_plus_noise_from_stream_21():
    rng = np.random.default_rng(0)
    c, p = rng.normal(size=(3, K)).astype(np.float32), rng.normal(size=(3, K)).astype(np.float32)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(5), i))(jnp.arange(3))
    from augdiff.methods.diffinv import Perturbation

    got = E.conditioning(keys, c, p, augment="none", perturbation=Perturbation(0.1, 0.1),
                         alpha=1.0, dropout_p=0.4)
    eps = np.stack([np.asarray(jax.random.normal(jax.random.fold_in(k, 21), (1, K)))[0]
                    for k in keys])
    np.testing.assert_allclose(got, 0.9 * c + 0.1 * p + 0.1 * eps, rtol=1e-5, atol=1e-6)


def test_embedding_mixes_of_the_inverted_vectors():
    """Mixup lies on the segment c_i–c_j; CutMix takes every coordinate from one of the two;
    Dropout(0.4) zeroes coordinates and scales the rest by 1/0.6 (seed 001)."""
    rng = np.random.default_rng(0)
    n = 400
    c = rng.normal(size=(n, 10)).astype(np.float32) + 3.0
    p = rng.normal(size=(n, 10)).astype(np.float32) - 3.0
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(1), i))(jnp.arange(n))
    from augdiff.methods.diffinv import Perturbation

    kw = dict(perturbation=Perturbation(), alpha=1.0, dropout_p=0.4)
    mix = E.conditioning(keys, c, p, augment="embed_mixup", **kw)
    lam = (mix - p) / (c - p)
    np.testing.assert_allclose(lam, lam[:, :1] * np.ones((1, 10)), atol=1e-4)
    assert 0.4 < float(lam[:, 0].mean()) < 0.6  # Beta(1, 1)
    cut = E.conditioning(keys, c, p, augment="embed_cutmix", **kw)
    assert np.all((cut == c) | (cut == p))
    assert 0.3 < float((cut == p).mean()) < 0.7
    drop = E.conditioning(keys, c, p, augment="embed_cutmix+dropout", **kw)
    zero = drop == 0
    assert 0.35 < float(zero.mean()) < 0.45
    kept = ~zero
    np.testing.assert_allclose(drop[kept], (cut / 0.6)[kept], rtol=1e-5)
    with pytest.raises(ConfigError, match="pixel"):
        E.conditioning(keys, c, p, augment="pixel_cutmix", **kw)


def test_variants_cover_the_grid_evenly_and_keys_are_unique():
    examples = E.plan(90, 1, 45, np.arange(90))
    counts = np.bincount([e["variant"] for e in examples], minlength=45)
    assert counts.tolist() == [2] * 45
    assert len({e["key"] for e in examples}) == 90
    assert [e["example"] for e in examples[:3]] == [0, 45 + 1, 90 + 2]
    two = E.plan(3, 2, 5, np.arange(3))
    assert [(e["row"], e["variant"]) for e in two] == [(0, 0), (0, 1), (1, 2), (1, 3), (2, 4),
                                                       (2, 0)]
    with pytest.raises(ConfigError, match="images_per_vector"):
        E.plan(3, 6, 5, np.arange(3))


def test_sampler_applies_mean_vector_cfg_and_ignores_the_batch(gen, monkeypatch):
    """What reaches the network: the conditional rows' vectors and the unconditional mean
    stacked in one call; an example's image does not depend on the other examples."""
    draw = E._sampler(gen["net_apply"], gen["edm"], gen["image_shape"], 3)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(0), i))(jnp.arange(3))
    cond = jnp.asarray(np.random.default_rng(0).normal(size=(3, K)), jnp.float32)
    un = jnp.tile(jnp.mean(cond, 0, keepdims=True), (3, 1))
    scale = jnp.array([1.5, 2.0, 3.0])
    full = np.asarray(draw(gen["params"], keys, cond, un, scale))
    alone = np.asarray(draw(gen["params"], keys[1:2], cond[1:2], un[1:2], scale[1:2]))
    np.testing.assert_allclose(full[1], alone[0], atol=1e-3)  # float reassociation only
    # scale 1 is the conditional model: the mean vector has no effect
    one = np.asarray(draw(gen["params"], keys[:1], cond[:1], jnp.zeros((1, K)), jnp.ones(1)))
    one_b = np.asarray(draw(gen["params"], keys[:1], cond[:1], un[:1], jnp.ones(1)))
    np.testing.assert_allclose(one, one_b, atol=1e-3)
    # scale s: D_u + s (D_c − D_u), checked on the first Heun evaluation's denoiser by a spy
    seen = []
    real_apply = gen["net_apply"]

    def spy(params, x, noise, labels=None, **kw):
        jax.debug.callback(lambda v: seen.append(np.asarray(v)), labels["class"])
        return real_apply(params, x, noise, labels, **kw)

    E._sampler.cache_clear()
    spy_draw = E._sampler(spy, gen["edm"], gen["image_shape"], 2)
    spy_draw(gen["params"], keys[:1], cond[:1], un[:1], scale[:1])
    lab = np.asarray(seen[0]).reshape(-1, K)
    np.testing.assert_allclose(lab, np.concatenate([np.asarray(cond[:1]), np.asarray(un[:1])]),
                               atol=1e-6)


def _cfg(tmp_path, **inv):
    c = ml_collections.ConfigDict({
        "seed": 0, "workdir": str(tmp_path),
        "inversion": {"steps": 4, "save_steps": (2, 4), "learning_rate": 0.03,
                      "weight_decay": 0.01, "init": "torch_linear", "fan_in": 100,
                      "group_size": 3, "dir": ""}})
    c.inversion.update(inv)
    return c


class _Real:
    def __init__(self, n):
        self.images = _images(n)
        self.labels = np.arange(n) % K

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": int(self.labels[i])}

    def name_of(self, i):
        return f"img{i}.png"


def test_group_files_resume_and_refuse_tampering(gen, tmp_path):
    real, folder = _Real(5), str(tmp_path / "inv")
    out = E.run_inversion(_cfg(tmp_path), gen, real, folder)
    assert out == {"groups": 2, "groups_done_now": 2, "images": 5}
    snaps = E.load_inversion(_cfg(tmp_path), gen, 5, folder)
    assert sorted(snaps) == [2, 4] and snaps[4].shape == (5, K)
    # resume: finished groups are verified and kept, not redone
    assert E.run_inversion(_cfg(tmp_path), gen, real, folder)["groups_done_now"] == 0
    # other settings: refused, naming the file and the field
    with pytest.raises(ConfigError, match=r"group-00000\.npz.*learning_rate"):
        E.load_inversion(_cfg(tmp_path, learning_rate=0.1), gen, 5, folder)
    # a bit flipped inside the vectors: the zip's CRC fails
    path = os.path.join(folder, "group-00001.npz")
    data = bytearray(open(path, "rb").read())
    member = data.find(b"\x93NUMPY", data.find(b"snapshots.npy"))  # the member's npy bytes
    data[member + 130] ^= 0x10  # past its 128-byte header: a bit of the vectors themselves
    open(path, "wb").write(bytes(data))
    with pytest.raises(ConfigError, match=r"group-00001\.npz"):
        E.load_inversion(_cfg(tmp_path), gen, 5, folder)
    # a missing group is named
    os.remove(path)
    with pytest.raises(ConfigError, match=r"group-00001\.npz is missing"):
        E.load_inversion(_cfg(tmp_path), gen, 5, folder)


def test_group_file_with_other_images_is_refused(gen, tmp_path):
    folder = str(tmp_path / "inv")
    E.run_inversion(_cfg(tmp_path), gen, _Real(5), folder)
    settings = E._settings(_cfg(tmp_path), gen)
    with pytest.raises(ConfigError, match="other images"):
        E.read_group(os.path.join(folder, "group-00000.npz"), settings, np.arange(1, 4))
    meta = json.loads(str(np.load(os.path.join(folder, "group-00000.npz"))["settings"]))
    assert meta["generator_step"] == 1 and meta["steps"] == 4


def _sampling_cfg(tmp_path, conditioning="inverted", augment="none"):
    c = _cfg(tmp_path)
    c.conditioning, c.augment, c.store_dir = conditioning, augment, str(tmp_path / "store")
    c.sampling = ml_collections.ConfigDict({
        "checkpoints": (2, 4), "guidance": (0.5, 2.0), "guidance_form": "paper",
        "num_partners": 2, "interpolation_strength": 0.1, "noise_scale": 0.1, "alpha": 1.0,
        "dropout_p": 0.4, "images_per_vector": 1, "num_steps": 2, "batch_size": 4})
    return c


class _RealNamed(_Real):
    class_names = ("a", "b", "c")


@pytest.mark.parametrize("conditioning", ["inverted", "class"])
def test_what_reaches_the_sampler_and_the_store(gen, tmp_path, monkeypatch, conditioning):
    """The wire from the learned vectors to the network's inputs: each example's condition
    (DI perturbation of its vector at its variant's snapshot, or its class one-hot), the
    unconditional input ū = the mean of that snapshot's vectors (the mean one-hot for
    'class'), the CFG scale 1 + w; and every image lands in the store under its parent's
    class."""
    real = _RealNamed(6)
    folder = str(tmp_path / "inv")
    cfg = _sampling_cfg(tmp_path, conditioning)
    E.run_inversion(cfg, gen, real, folder)
    snaps = E.load_inversion(cfg, gen, 6, folder)
    calls = []

    def fake_sampler(net_apply, edm, shape, steps):
        def draw(params, keys, cond, un, scale):
            calls.append((np.asarray(keys), np.asarray(cond), np.asarray(un),
                          np.asarray(scale)))
            return jnp.zeros((len(cond), *shape))
        return draw

    monkeypatch.setattr(E, "_sampler", fake_sampler)
    out = E.run_sampling(cfg, gen, real, folder)
    assert out["written"] == 6
    cond = np.concatenate([c[1] for c in calls])
    un = np.concatenate([c[2] for c in calls])
    scale = np.concatenate([c[3] for c in calls])
    from augdiff.data.store import SyntheticStore

    store = SyntheticStore(str(tmp_path / "store"))
    prov = [store.provenance(i) for i in range(len(store))]
    order = {p["example"]: j for j, p in enumerate(prov)}
    # the sampler is called in plan order (pending_batches keeps it)
    plan = E.plan(6, 1, len(cfg.sampling.guidance) * len(
        cfg.sampling.checkpoints if conditioning == "inverted" else (0,)) * (
        2 if conditioning == "inverted" else 1), np.arange(6))
    assert sorted(order) == sorted(p["example"] for p in plan)
    for j, item in enumerate(plan):
        p = prov[order[item["example"]]]
        r = item["row"]
        assert p["parent"] == r and int(store.labels[order[item["example"]]]) == r % K
        assert scale[j] == pytest.approx(1.0 + p["guidance"])  # the paper's (1 + w)
        if conditioning == "class":
            np.testing.assert_allclose(cond[j], np.eye(K)[r % K])
            np.testing.assert_allclose(un[j], np.eye(K)[np.arange(6) % K].mean(0), atol=1e-6)
        else:
            v = snaps[p["checkpoint"]]
            np.testing.assert_allclose(un[j], v.mean(0), atol=1e-6)
            assert real.labels[p["partner"]] == real.labels[r] and p["partner"] != r
            key = jax.random.fold_in(jax.random.PRNGKey(1), item["example"])
            eps = np.asarray(jax.random.normal(jax.random.fold_in(key, 21), (1, K)))[0]
            np.testing.assert_allclose(cond[j], 0.9 * v[r] + 0.1 * v[p["partner"]] + 0.1 * eps,
                                       rtol=1e-5, atol=1e-6)


def test_group_file_with_non_finite_vectors_is_refused(gen, tmp_path):
    """A well-formed file (valid zip, right settings and ids) whose vectors are NaN."""
    import io

    settings = E._settings(_cfg(tmp_path), gen)
    buf = io.BytesIO()
    np.savez(buf, ids=np.arange(3), labels=np.zeros(3, int), steps=np.array([2, 4]),
             snapshots=np.full((2, 3, K), np.nan, np.float32), loss=np.zeros(3, np.float32),
             settings=np.asarray(json.dumps(settings, sort_keys=True)))
    path = tmp_path / "group-00000.npz"
    path.write_bytes(buf.getvalue())
    with pytest.raises(ConfigError, match=r"group-00000\.npz holds non-finite"):
        E.read_group(str(path), settings, np.arange(3))
