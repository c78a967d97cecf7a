"""Online EDM generation inside classifier training (augdiff.methods.online).

References are independent of the online module: the Heun sampler called directly on keys and
labels derived in the test, the uint8 rounding of NVlabs/edm written out, a χ² statistic
written here, and an uninterrupted run for the kill/resume check.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from augdiff import distributed
from augdiff.config import ConfigError
from augdiff.edm import samplers
from augdiff.edm import train as edm_train
from augdiff.edm.core import EDMConfig, denoise
from augdiff.methods.online import OnlineEDM, class_probs
from augdiff.train.checkpoint import Checkpointer

REPO = pathlib.Path(__file__).resolve().parents[2]
C, SIZE = 4, 16


def _config_module(name: str):
    return importlib.import_module(f"augdiff.configs.{name}")


def _edm_config() -> ml_collections.ConfigDict:
    c = _config_module("casd_cifar10").get_config("classcond")
    c.data.image_size = SIZE
    c.model.preset = "tiny"
    c.model.model_channels = 8
    c.model.dropout = 0.0
    c.train.precision = "float32"
    return c


@pytest.fixture(scope="session")
def generator():
    """A tiny class-conditional SongUNet, random init with every weight perturbed (the fresh
    output conv is ~1e-5 scale, so the network would hardly matter otherwise)."""
    cfg = _edm_config()
    model = edm_train.build_model(cfg, num_classes=C, precision="float32")
    step_cfg = edm_train.StepConfig.from_config(cfg, num_classes=C)
    state = edm_train.init_state(jax.random.PRNGKey(3), model, edm_train.make_optimizer(cfg),
                                 (1, SIZE, SIZE, 3), step_cfg)
    leaves, tree = jax.tree_util.tree_flatten(state.params)
    keys = jax.random.split(jax.random.PRNGKey(4), len(leaves))
    leaves = [p + 0.2 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys,
                                                                                strict=True)]
    params = jax.tree_util.tree_unflatten(tree, leaves)
    return cfg, model, state.replace(params=params, ema=params)


def _online(generator, devices, **kw) -> OnlineEDM:
    cfg, model, state = generator
    mesh = distributed.make_mesh(devices=devices)
    args = dict(net_apply=edm_train.make_net_apply(model),
                params=distributed.replicate(state.ema, mesh), edm_cfg=EDMConfig(),
                image_shape=(SIZE, SIZE, 3), probs=np.full(C, 1.0 / C), rows=8, mesh=mesh,
                seed=11, num_steps=3)
    args.update(kw)
    return OnlineEDM(**args)


def _uint8(x: np.ndarray) -> np.ndarray:
    """NVlabs/edm generate.py: (x * 127.5 + 128).clip(0, 255).to(uint8)."""
    return np.clip(np.floor(x * 127.5 + 128.0), 0, 255).astype(np.uint8)


def test_images_equal_a_direct_heun_call(generator):
    """Row j of refresh r = Heun from σ_max·n_j, n_j ~ fold_in(fold_in(fold_in(K,0),r),j), with
    the class drawn from fold_in(fold_in(fold_in(K,1),r),j)."""
    _, model, state = generator
    gen = _online(generator, jax.devices()[:1], rows=4)
    r = 5
    out = jax.device_get(gen.buffer(r))
    base = jax.random.PRNGKey(11)
    n = 3
    i = np.arange(n)
    sig = (80.0 ** (1 / 7) + i / (n - 1) * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    sigmas = jnp.asarray(np.append(sig, 0.0), jnp.float32)
    apply = edm_train.make_net_apply(model)
    for j in range(4):
        k_img = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(base, 0), r), j)
        k_lab = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(base, 1), r), j)
        c = int(jax.random.categorical(k_lab, jnp.log(jnp.full(C, 1.0 / C))))
        assert out["label"][j] == c
        x_T = jax.random.normal(k_img, (1, SIZE, SIZE, 3), jnp.float32) * sigmas[0]
        lab = {"class": jnp.asarray([c], jnp.int32)}
        x = samplers.heun_sampler(lambda x, s, lab=lab: denoise(apply, state.ema, x, s, lab),
                                  x_T, sigmas)
        want = _uint8(np.asarray(x[0]))
        diff = np.abs(out["image"][j].astype(int) - want.astype(int))
        assert diff.max() <= 1 and np.mean(diff == 0) > 0.99, (j, diff.max())
        assert want.std() > 5  # the images are not flat
    # the network matters: other classes give other images from the same noise
    assert not np.array_equal(out["image"][0], out["image"][1])


def test_same_images_on_1_and_8_devices(generator):
    one = _online(generator, jax.devices()[:1], refresh_every=3, buffer_size=16)
    eight = _online(generator, jax.devices()[:8], refresh_every=3, buffer_size=16)
    real = {"image": np.zeros((8, SIZE, SIZE, 3), np.uint8), "label": np.zeros(8, np.int32),
            "weight": np.ones(8, np.float32), "source": np.zeros(8, np.int32)}
    for step in (0, 4):
        a = jax.device_get(one.complete(distributed.shard_batch(real, one.mesh), step))
        b = jax.device_get(eight.complete(distributed.shard_batch(real, eight.mesh), step))
        np.testing.assert_array_equal(a["label"], b["label"])
        np.testing.assert_array_equal(a["source"], [0] * 8 + [1] * 8)
        d = np.abs(a["image"].astype(int) - b["image"].astype(int))
        assert d.max() <= 1 and np.mean(d == 0) > 0.99


def test_fresh_rows_never_repeat_over_an_epoch(generator):
    gen = _online(generator, jax.devices()[:8])
    seen = set()
    for step in range(12):
        buf = jax.device_get(gen.buffer(step))
        seen |= {hashlib.sha1(im.tobytes()).hexdigest() for im in buf["image"]}
    assert len(seen) == 12 * 8


def test_class_histogram_matches_long_tail_balance(generator):
    counts = np.array([40, 20, 10, 5])  # balance to the head: g = (0, 20, 30, 35)
    p = class_probs("balance", counts)
    np.testing.assert_allclose(p, np.array([0, 20, 30, 35]) / 85)
    gen = _online(generator, jax.devices()[:8], num_steps=2, rows=8, buffer_size=800,
                  refresh_every=100, probs=p)
    labels = np.asarray(jax.device_get(gen.buffer(0))["label"])
    hist = np.bincount(labels, minlength=C)
    assert hist[0] == 0
    expected = 800 * p[1:]
    chi2 = float(np.sum((hist[1:] - expected) ** 2 / expected))
    assert chi2 < 13.82, (hist, chi2)  # χ²(2 dof) at p = 0.001


def test_spill_store_holds_every_nth_row_seen_and_resumes(generator, tmp_path):
    """Every 3rd synthetic row the classifier saw (global row index s·m + j ≡ 0 mod 3) lands in
    a store with its provenance; a writer dropped after a commit at step 4 ("killed") and a new
    source resumed from step 4 give exactly the rows of an uninterrupted pass, once each."""
    from augdiff.data.export import export
    from augdiff.data.store import SyntheticStore, inspect_store

    m, steps, n = 8, 8, 3
    kw = dict(num_steps=2, rows=m, refresh_every=3, buffer_size=16)
    real = {"image": np.zeros((m, SIZE, SIZE, 3), np.uint8), "label": np.zeros(m, np.int32),
            "weight": np.ones(m, np.float32), "source": np.zeros(m, np.int32)}
    store = tmp_path / "spill"
    gen = _online(generator, jax.devices()[:1], spill_every=n, spill_store=str(store), **kw)
    seen = {}
    for step in range(6):
        out = jax.device_get(gen.complete(distributed.shard_batch(real, gen.mesh), step))
        seen.update({(step, j): (out["image"][m + j], int(out["label"][m + j]))
                     for j in range(m)})
        if step == 3:
            gen.flush_spill()  # the checkpoint after 4 completed steps
    gen.close(commit=False)  # killed during step 5: steps 4-5 were not committed
    gen = _online(generator, jax.devices()[:1], spill_every=n, spill_store=str(store), **kw)
    for step in range(4, steps):
        out = jax.device_get(gen.complete(distributed.shard_batch(real, gen.mesh), step))
        seen.update({(step, j): (out["image"][m + j], int(out["label"][m + j]))
                     for j in range(m)})
    gen.close()
    want = sorted((s, j) for s in range(steps) for j in range(m) if (s * m + j) % n == 0)
    syn = SyntheticStore(str(store))
    got = {}
    for i in range(len(syn)):
        prov = syn.provenance(i)
        got[(prov["step"], prov["row"])] = (syn[i]["image"], int(syn[i]["label"]), prov)
    assert sorted(got) == want and len(syn) == len(want) == 22
    for key, (image, label, prov) in got.items():
        np.testing.assert_array_equal(image, seen[key][0])
        assert label == prov["label"] == seen[key][1]
        assert prov["seed"] == 11 and prov["method"] == "online/edm"
        assert prov["refresh"] == key[0] // 3 and 0 <= prov["buffer_row"] < 16
    info = inspect_store(str(store))
    assert info["methods"] == {"online/edm": 22}
    export(str(store), str(tmp_path / "png"))
    assert len(list((tmp_path / "png").rglob("*.png"))) == 22


def test_edit_mode_equals_the_offline_edit_and_hybrid_functions_on_the_same_keys(generator):
    """kind='edit': row j of step s = diffusemix(fold_in(K,4), I_j, SDEdit(I_j, n), [j],
    epoch=s, policy online) with n from fold_in(fold_in(fold_in(K,3),s),j) — the offline
    functions (augdiff.edm.edit.make_edit_fn, augdiff.methods.hybrids.diffusemix) called here
    on keys derived in the test; and over 6 steps of the SAME real batch no synthetic row
    repeats (fresh edits and masks every step)."""
    from augdiff.edm.edit import make_edit_fn
    from augdiff.methods import hybrids
    from augdiff.methods.online import OnlineEdit

    cfg, model, state = generator
    mesh = distributed.make_mesh(devices=jax.devices()[:1])
    m, seed, sig, n_steps = 4, 7, 1.5, 2
    spec = hybrids.DiffuseMixSpec(mask="concat", orientation="random", fractal=True, lam=0.2)
    gen = OnlineEdit(net_apply=edm_train.make_net_apply(model),
                     params=distributed.replicate(state.ema, mesh), edm_cfg=EDMConfig(),
                     image_shape=(SIZE, SIZE, 3), rows=m, mesh=mesh, spec=spec, seed=seed,
                     num_steps=n_steps, sigma_start=sig, fractal_bank_size=4)
    rng = np.random.default_rng(0)
    real = {"image": np.stack([_image(rng, c) for c in range(m)]),
            "label": np.arange(m, dtype=np.int32), "weight": np.ones(m, np.float32),
            "source": np.zeros(m, np.int32)}
    base = jax.random.PRNGKey(seed)
    edit = make_edit_fn({"net_apply": edm_train.make_net_apply(model), "edm": EDMConfig(),
                         "size": SIZE, "class_conditional": True}, sigma_start=sig,
                        num_steps=n_steps)
    bank = hybrids.fractal_bank(jax.random.fold_in(base, 5), 4, SIZE)
    parent = real["image"].astype(np.float32) / 127.5 - 1.0
    seen = set()
    for step in range(6):
        out = jax.device_get(gen.complete(distributed.shard_batch(real, mesh), step))
        np.testing.assert_array_equal(out["source"], [0] * m + [1] * m)
        np.testing.assert_array_equal(out["label"][m:], real["label"])
        seen |= {hashlib.sha1(im.tobytes()).hexdigest() for im in out["image"][m:]}
        if step in (0, 5):
            keys = jnp.stack([jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(
                base, 3), step), j) for j in range(m)])
            edited = edit(state.ema, keys, jnp.asarray(parent), jnp.asarray(real["label"]))
            spec_on = hybrids.DiffuseMixSpec(mask="concat", orientation="random",
                                             fractal=True, lam=0.2, policy="online")
            want, _ = hybrids.diffusemix(jax.random.fold_in(base, 4), jnp.asarray(parent),
                                         edited, jnp.arange(m), bank, spec=spec_on, epoch=step)
            want = np.clip(np.rint(np.asarray(want) * 127.5 + 127.5), 0, 255)
            d = np.abs(out["image"][m:].astype(int) - want.astype(int))
            assert d.max() <= 1 and np.mean(d == 0) > 0.99, (step, d.max())
            assert not np.array_equal(out["image"][m:], real["image"])  # edited, not copied
    assert len(seen) == 6 * m


def _image(rng, c):
    img = rng.integers(0, 90, (SIZE, SIZE, 3)).astype(np.int32)
    img[..., c % 3] += 120
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def online_setup(generator, tmp_path_factory):
    """A toy image folder (12 train / 2 test per class) and the generator as an EDM
    train-diffusion checkpoint."""
    root = tmp_path_factory.mktemp("online")
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 2)):
        for c in range(C):
            d = root / "data" / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(_image(rng, c)).save(d / f"{i:03d}.png")
    cfg, _, state = generator
    cfg.workdir = str(root / "edm")
    ckpt = edm_train.checkpointer(cfg)
    edm_train.save_checkpoint(ckpt, state, {}, cfg.to_dict(),
                              {"num_classes": C, "classes": list(range(C))})
    ckpt.close()
    return root


def _train_config(root, workdir):
    c = _config_module("classify_cifar10").get_config("smoke")
    c.workdir = str(workdir)
    c.data.path = str(root / "data")
    c.data.image_size = SIZE
    c.data.per_class = 0
    c.model.name = "preact_resnet_tiny"
    c.model.width = 8
    c.batch_size = 16
    c.epochs = 2
    c.eval_batch_size = 8
    c.optim.lr = 0.05
    c.progress = False
    c.checkpoint_every_steps = 2
    c.synthetic.online.kind = "edm"
    c.synthetic.online.checkpoint = str(root / "edm")
    c.synthetic.online.share = 0.5
    c.synthetic.online.num_steps = 2
    c.synthetic.online.refresh_every = 3
    c.synthetic.online.buffer_size = 16
    c.synthetic.online.spill_every = 5  # into <workdir>/online_store
    return c


class _Crash(RuntimeError):
    pass


@pytest.mark.slow
def test_online_run_killed_and_resumed_equals_uninterrupted(online_setup, tmp_path):
    from augdiff.methods.online import build
    from augdiff.train.classifier import train_and_evaluate

    full = train_and_evaluate(_train_config(online_setup, tmp_path / "full"), online=build)
    assert full["synthetic_share"] == 0.5
    assert full["steps_per_epoch"] == 3

    def crash(step, metrics):
        if step == 5:  # after the checkpoint at step 4, inside refresh 1 (steps 3-5)
            raise _Crash(step)

    cfg = _train_config(online_setup, tmp_path / "resumed")
    with pytest.raises(_Crash):
        train_and_evaluate(cfg, step_hook=crash, online=build)
    assert Checkpointer(tmp_path / "resumed" / "checkpoints").latest_step() == 4
    resumed = train_and_evaluate(cfg, online=build)
    run = json.loads((tmp_path / "resumed" / "run.json").read_text())
    assert run["resumed_from_step"] == 4 and run["generated_images"] == 16  # refresh 1 again
    assert resumed == full
    # The spill store of the killed + resumed run holds exactly the uninterrupted run's rows.
    from augdiff.data.store import SyntheticStore

    def spilled(wd):
        st = SyntheticStore(str(wd / "online_store"))
        return {st.provenance(i)["key"]: st[i]["image"].tobytes() for i in range(len(st))}

    a, b = spilled(tmp_path / "full"), spilled(tmp_path / "resumed")
    assert a == b and len(a) == (6 * 8 + 4) // 5  # rows s·8 + j ≡ 0 (mod 5) of 6 steps


def test_the_shipped_generator_loads_as_an_online_source(repo_root):
    """The EMA-only checkpoint shipped in the package (no optimiser state) loads through the
    online source's loader, with the step and parameter count recorded at export."""
    from augdiff.methods.online import load_generator

    asset = repo_root / "augdiff/assets/generator_cifar10"
    record = json.loads((asset / "generator.json").read_text())
    mesh = distributed.mesh_from_config(ml_collections.ConfigDict(
        {"mesh": {"data": -1, "fsdp": 1}}))
    gen = load_generator(str(asset), mesh)
    assert gen["step"] == record["step"] and gen["num_classes"] == 10
    assert gen["image_shape"] == (16, 16, 3)
    assert sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(gen["params"])) \
        == record["num_params"]
    # kind='edit' builds the edit source from the config's fields (policy forced online).
    from augdiff.methods.online import OnlineEdit, make_online_source

    c = _config_module("classify_cifar10").get_config("smoke")
    c.data.image_size, c.batch_size = 16, 16
    on = c.synthetic.online
    on.kind, on.checkpoint, on.sigma_start, on.num_steps = "edit", str(asset), 0.7, 3
    on.hybrid.mask, on.hybrid.fractal, on.spill_every = "random", False, 0
    real = type("Real", (), {"num_classes": 10, "labels": np.arange(10)})()
    src = make_online_source(c, real, mesh)
    assert isinstance(src, OnlineEdit) and src.rows == 8
    assert (src.sigma_start, src.num_steps, src.spec.mask, src.spec.policy) == \
        (0.7, 3, "random", "online")
    on.share, c.batch_size = 0.75, 32  # edits need a real parent per synthetic row
    with pytest.raises(ConfigError, match="share <= 0.5"):
        make_online_source(c, real, mesh).complete(
            distributed.shard_batch({"image": np.zeros((8, 16, 16, 3), np.uint8),
                                     "label": np.zeros(8, np.int32),
                                     "weight": np.ones(8, np.float32),
                                     "source": np.zeros(8, np.int32)}, mesh), 0)


def test_online_config_without_a_builder_is_a_one_line_error():
    """The trainer knows no method: a config asking for online rows needs ``online=``."""
    from augdiff.train import classifier

    cfg = ml_collections.ConfigDict({"online": {"kind": "diffusemix"},
                                     "synthetic": {"online": {"kind": "edm"}}})
    with pytest.raises(ValueError, match=r"online\.kind and synthetic\.online\.kind .*"
                                         r"online=augdiff\.methods\.online\.build"):
        classifier._online_sources(cfg, None, None, None, None)
    none = ml_collections.ConfigDict({"online": {"kind": "none"}})
    assert classifier._online_sources(none, None, None, None, None) == (None, None)


@pytest.mark.slow
def test_spill_survives_a_kill_right_after_a_checkpoint(online_setup, tmp_path, monkeypatch):
    """The spill is flushed before the checkpoint that covers it: a crash the moment the step-4
    checkpoint is on disk (before anything else runs; the spill's unflushed rows are dropped
    like a kill's), then a resume from it, leaves every spilled row of 6 steps in the store."""
    from augdiff.data.store import SyntheticStore
    from augdiff.methods.online import build
    from augdiff.train.classifier import train_and_evaluate

    real_save = Checkpointer.save

    def save_then_die(self, step, *a, **k):
        out = real_save(self, step, *a, **k)
        if step == 4:
            raise _Crash(step)
        return out

    cfg = _train_config(online_setup, tmp_path / "wd")
    monkeypatch.setattr(Checkpointer, "save", save_then_die)
    with pytest.raises(_Crash):
        train_and_evaluate(cfg, online=build)
    monkeypatch.undo()
    assert Checkpointer(tmp_path / "wd" / "checkpoints").latest_step() == 4
    train_and_evaluate(cfg, online=build)
    st = SyntheticStore(str(tmp_path / "wd" / "online_store"))
    keys = [st.provenance(i)["key"] for i in range(len(st))]
    # rows g = s*8 + j (6 steps of 8 synthetic rows) with g % 5 == 0, each once
    assert len(keys) == len(set(keys)) == len([g for g in range(6 * 8) if g % 5 == 0])
