"""DiffuseMix generation end to end (issue 5, Must-show 4): 20 CIFAR-10 images x 2 prompts with a
tiny random InstructPix2Pix -> edits store -> offline hybrids -> a classifier trains on them;
byte-identical stores from the same seed; resume after a kill; black / non-finite filtering;
online pairs on device; SHB with a tiny CLIP; the seed 000 configs."""

from __future__ import annotations

import glob
import json
import os
import pathlib
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from augdiff.config import load_config
from augdiff.data.store import SyntheticStore, example_keys
from augdiff.methods import diffusemix as DM
from augdiff.methods import edits as E
from augdiff.methods import hybrids
from augdiff.methods import online as O
from augdiff.methods import shb as S

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "augdiff" / "configs" / "diffusemix_cifar100.py")
N_REAL, PROMPTS = 20, "Autumn|snowy"


@pytest.fixture(scope="session")
def cifar20(cifar_zip, tmp_path_factory) -> pathlib.Path:
    """An image folder cut from the CIFAR-10 zip: 2 train + 1 test image per class."""
    root = tmp_path_factory.mktemp("cifar20")
    with zipfile.ZipFile(cifar_zip) as z:
        names = sorted(n for n in z.namelist() if n.endswith(".jpg"))
        for split, k in (("train", 2), ("test", 1)):
            seen: dict[str, int] = {}
            for n in names:
                _, sp, cls, fname = n.split("/")
                if sp != split or seen.get(cls, 0) >= k:
                    continue
                seen[cls] = seen.get(cls, 0) + 1
                (root / split / cls).mkdir(parents=True, exist_ok=True)
                (root / split / cls / fname).write_bytes(z.read(n))
    return root


def _config(workdir, data, *overrides, variant: str = "smoke"):
    return load_config(
        f"{CONFIG}:{variant}",
        [
            f"workdir={workdir}",
            f"data.path={data}",
            "data.per_class=0",
            "data.image_size=16",
            f"diffusemix.prompts={PROMPTS}",
            "diffusemix.resolution=16",
            "diffusemix.steps=2",
            "diffusemix.batch_size=8",
            "diffusemix.shard_size=8",
            "progress=False",
            *overrides,
        ],
    )


@pytest.fixture(scope="session")
def ip2p_path(tmp_path_factory) -> str:
    from augdiff.sd import tiny

    return tiny.make_tiny_sd(tmp_path_factory.mktemp("ip2p") / "m", kind="ip2p", formats=("flax",))


@pytest.fixture(scope="session")
def run_a(cifar20, ip2p_path, tmp_path_factory):
    """One complete generation (edits + fractal hybrids with label scaling)."""
    wd = tmp_path_factory.mktemp("run_a")
    cfg = _config(wd, cifar20, f"diffusemix.model={ip2p_path}")
    return cfg, DM.generate(cfg)


def _decoded(root: str) -> dict[str, tuple[bytes, dict]]:
    s = SyntheticStore(root)
    out = {}
    for i in range(len(s)):
        prov = s.provenance(i)
        out[prov["key"]] = (s[i]["image"].tobytes(), prov)
    return out


def _shard_keys(root: str) -> list[str]:
    keys: list[str] = []
    for idx in sorted(glob.glob(os.path.join(root, "shard-*.idx.json"))):
        with open(idx) as f:
            keys += json.load(f)["keys"]
    return keys


# --------------------------------------------------------------------------------------------


def test_prompts_plan_and_keys():
    assert E.resolve_prompts("all") == E.DIFFUSEMIX_PROMPTS and len(E.DIFFUSEMIX_PROMPTS) == 9
    assert E.resolve_prompts("sunset") == ("sunset",)
    assert E.resolve_prompts("Autumn| a sketch with crayon") == ("Autumn", "a sketch with crayon")
    with pytest.raises(ValueError, match="duplicate"):
        E.resolve_prompts("snowy|snowy")
    with pytest.raises(ValueError, match="empty prompt"):
        E.resolve_prompts("snowy||rainbow")
    plan = E.plan_edits(3, 2)
    assert [p["example"] for p in plan] == list(range(6))
    assert plan[3] == dict(key="edit-r0000001-p01", example=3, parent=1, prompt_index=1)
    edit, hyb, frac = E.run_keys(0)
    assert len({tuple(np.asarray(k)) for k in (edit, hyb, frac)}) == 3
    keys = example_keys(edit, [5, 0, 5])
    np.testing.assert_array_equal(keys[0], jax.random.fold_in(edit, 5))
    np.testing.assert_array_equal(keys[0], keys[2])


def test_output_status_filters_black_and_nonfinite():
    x = np.random.default_rng(0).uniform(0.1, 1, (5, 4, 4, 3)).astype(np.float32)
    x[1] = 0.0
    x[2, 0, 0, 0] = np.nan
    x[3, 1, 1, 2] = np.inf
    x[4] = 1.5 / 255
    assert list(E.output_status(x)) == ["ok", "black", "nonfinite", "nonfinite", "ok"]
    assert list(E.output_status(x, black_threshold=2 / 255)) == [
        "ok", "black", "nonfinite", "nonfinite", "black"]


# Seed 000 Tables 1-2, written from the paper (§3.1 eqs. 1-3, §3.2 eq. 4, Table 1's caption,
# §4.1 "Baseline", §4.5) and DiffuseMix's published pipeline (every image it emits is
# 0.8·H + 0.2·F): row -> (mask, fractal, λ, label scaling, schedule ρ at epochs 0/60/150/250).
_W, _T = 50, 300  # warm-up w of eq. 2 (the seed 000 code's value), T
PAPER_ROWS = {
    "baseline": ("concat", True, 0.2, False, (0.5, 0.5, 0.5, 0.5)),
    "dc": ("concat", True, 0.2, False, (0.5, 0.5, 0.5, 0.5)),
    "dm_lin": ("concat", True, 0.2, False, tuple(t / _T for t in (0, 60, 150, 250))),
    "dm_warm": ("concat", True, 0.2, False,
                tuple(0.0 if t < _W else (t - _W) / (_T - _W) for t in (0, 60, 150, 250))),
    "dm_step": ("concat", True, 0.2, False, (0.0, 0.0, 0.5, 1.0)),
    "hybrid_0.05_0.15": ("concat", True, (0.05, 0.15), False, (0.5,) * 4),
    "hybrid_0.10_0.20": ("concat", True, (0.10, 0.20), False, (0.5,) * 4),
    "hybrid_0.15_0.25": ("concat", True, (0.15, 0.25), False, (0.5,) * 4),
    "hybrid_0.20_0.30": ("concat", True, (0.20, 0.30), False, (0.5,) * 4),
    "fractal_0.20_lsf1.00": ("original", True, 0.2, False, (0.5,) * 4),
    "fractal_0.20_lsf0.80": ("original", True, 0.2, True, (0.5,) * 4),
    "shb": ("semantic", False, None, False, (0.5,) * 4),
    "shb_fractal": ("semantic", True, 0.2, False, (0.5,) * 4),
    "random": ("random", True, 0.2, False, (0.5,) * 4),
}


@pytest.mark.parametrize("row", sorted(PAPER_ROWS))
def test_table_row_matches_paper_definition(row):
    """Must-show 1: each Table 1-2 row's generation spec, loss and schedule equal the paper's
    definition written above (not read back from the config)."""
    from augdiff.data import schedules

    mask, fractal, lam, lsf, rhos = PAPER_ROWS[row]
    cfg = load_config(f"{CONFIG}:{row}")
    spec, sem = DM.hybrid_spec(cfg.diffusemix.hybrid)
    assert sem == (mask == "semantic")
    if not sem:
        assert spec.mask == mask
    assert spec.fractal is fractal and spec.label_scaling is lsf
    if fractal:
        assert spec.lam == (pytest.approx(lam) if isinstance(lam, float) else lam)
    assert cfg.loss.kind == "bce_softmax"  # one loss for every row of a table
    if mask == "concat":
        assert spec.ramp == pytest.approx(19 * 32 / 256) and spec.orientation == "random"
    sched = schedules.from_config(cfg.synthetic.schedule, epochs=cfg.epochs)
    assert [sched(t) for t in (0, 60, 150, 250)] == pytest.approx(list(rhos))


def test_unknown_old_row_names_are_refused():
    for old in ("fractal", "fractal_lsf", "linear"):
        with pytest.raises(ValueError, match="unknown variant"):
            load_config(f"{CONFIG}:{old}")
    bad = load_config(f"{CONFIG}:shb", ["diffusemix.hybrid.policy=online"])
    with pytest.raises(ValueError, match="semantic"):
        DM.hybrid_spec(bad.diffusemix.hybrid)


def test_fractal_bank_from_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    for i, im in enumerate(imgs):
        Image.fromarray(im).save(tmp_path / f"f{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    cfg = load_config(f"{CONFIG}:baseline", [f"diffusemix.fractal_path={tmp_path}"])
    bank = DM.fractal_bank_from_config(cfg.diffusemix, jax.random.PRNGKey(0), 8)
    np.testing.assert_allclose(np.asarray(bank), imgs / 255.0 * 2 - 1, atol=1e-6)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no .png"):
        DM.fractal_bank_from_config({"fractal_path": str(empty)}, jax.random.PRNGKey(0), 8)


@pytest.mark.parametrize(
    "variant", [*PAPER_ROWS, "vanilla", "online", "nine", "smoke", "interval_0.0_0.4",
                "ratio_1_3"])
def test_configs_cover_seed000_rows(variant, tmp_path):
    cfg = load_config(f"{CONFIG}:{variant}", [f"workdir={tmp_path}"])
    assert cfg.method == "diffusemix" and cfg.mesh.data == -1 and "seed" in cfg
    if variant == "smoke":
        assert cfg.diffusemix.tiny and cfg.model.name == "preact_resnet_tiny"
    else:
        assert cfg.model.name == "preact_resnet18" and cfg.epochs == 300
        assert cfg.optim.schedule == "multistep" and tuple(cfg.optim.milestones) == (100, 200)
        assert cfg.diffusemix.text_guidance == 4.0 and cfg.diffusemix.resolution == 256
        assert cfg.diffusemix.sampler == "euler_ancestral" and cfg.augment.crop_pad == 2
    # The train half reads the store the generate half writes.
    edits, hybrids_dir = DM.store_dirs(cfg)
    assert edits == f"{tmp_path}/store/edits"
    want = {"vanilla": "", "online": edits}.get(variant, hybrids_dir)
    assert cfg.synthetic.path == want
    assert (cfg.online.kind == "diffusemix") == (variant == "online")
    if variant == "nine":
        assert E.resolve_prompts(cfg.diffusemix.prompts) == E.DIFFUSEMIX_PROMPTS
    with pytest.raises(Exception, match="unknown variant"):
        load_config(f"{CONFIG}:nope")


@pytest.mark.slow
def test_end_to_end_store_hybrids_and_training(run_a, cifar20):
    """Must-show 4: 20 images x 2 prompts -> 40 edits with provenance -> 40 hybrids -> training
    consumes synthetic rows."""
    from augdiff.data.sources import open_real_source
    from augdiff.train.classifier import train_and_evaluate

    cfg, summary = run_a
    edits_dir, hyb_dir = DM.store_dirs(cfg)
    assert summary["store"] == hyb_dir == cfg.synthetic.path
    real = open_real_source(cfg.data, "train")
    assert len(real) == N_REAL
    edits = SyntheticStore(edits_dir)
    assert len(edits) == 2 * N_REAL and summary["edits_summary"]["written"] == 2 * N_REAL
    assert edits.manifest["config"]["prompts"] == ["Autumn", "snowy"]
    assert edits.manifest["config"]["model"] == "tiny-random"
    seen = set()
    for i in range(len(edits)):
        p = edits.provenance(i)
        rec = edits[i]
        parent, j = p["parent"], p["prompt_index"]
        assert p["key"] == f"edit-r{parent:07d}-p{j:02d}" and p["example"] == parent * 2 + j
        assert p["prompt"] == ("Autumn", "snowy")[j] and p["seed"] == 0
        assert (p["guidance"], p["image_guidance"], p["steps"]) == (4.0, 1.5, 2)
        assert p["sampler"] == "euler_ancestral" and p["model"] == "tiny-random"
        assert p["parent_name"] == real.name_of(parent)
        assert int(rec["label"]) == int(real.labels[parent]) and int(rec["source"]) == 1
        assert rec["image"].shape == (16, 16, 3)
        seen.add((parent, j))
    assert seen == {(i, j) for i in range(N_REAL) for j in range(2)}

    hyb = SyntheticStore(hyb_dir)
    assert len(hyb) == 2 * N_REAL
    lams = []
    for i in range(len(hyb)):
        p, rec = hyb.provenance(i), hyb[i]
        assert p["key"] == f"hybrid-{p['pair_id']}" and int(rec["source"]) == 2
        assert 0.1 <= p["lam"] <= 0.3  # λ ~ U[0.1, 0.3]
        assert float(rec["weight"]) == pytest.approx(1 - p["lam"], abs=1e-6)  # label scaling
        lams.append(p["lam"])
    assert np.std(lams) > 0  # λ drawn per pair
    # Re-derive one hybrid from its pair: the stored bytes are the transform's output.
    row = next(i for i in range(len(hyb)) if hyb.provenance(i)["pair_id"] == 7)
    e_row = next(i for i in range(len(edits)) if edits.provenance(i)["example"] == 7)
    spec, _ = DM.hybrid_spec(cfg.diffusemix.hybrid)
    _, hkey, fkey = E.run_keys(0)
    bank = hybrids.fractal_bank(fkey, cfg.diffusemix.fractal_bank_size, 16)
    x, _ = hybrids.diffusemix(hkey, hybrids.to_float(real[3]["image"][None]),
                              hybrids.to_float(edits[e_row]["image"][None]),
                              jnp.asarray([7], jnp.int32), bank, spec=spec)
    np.testing.assert_array_equal(hybrids.to_uint8(x)[0], hyb[row]["image"])

    # A classifier trains on real + hybrids (BCE with the per-record weights).
    tcfg = load_config(f"{CONFIG}:smoke", [
        f"workdir={cfg.workdir}/train", f"data.path={cifar20}", "data.per_class=0",
        "data.image_size=16", f"store_dir={os.path.dirname(hyb_dir)}", "model.width=8",
        "batch_size=8", "epochs=2", "steps_per_epoch=2", "eval_batch_size=16", "progress=False"])
    result = train_and_evaluate(tcfg, online=O.build)
    assert result["synthetic_examples"] == 2 * N_REAL
    shares = [e["synthetic_share"] for e in result["epochs"]]
    assert len(shares) == 2 and all(0.25 <= s <= 0.75 for s in shares)  # ρ = 1:1 of 8 rows
    assert np.isfinite(result["train_loss"])


@pytest.mark.slow
def test_same_seed_same_bytes_and_resume_after_kill(run_a, cifar20, ip2p_path, tmp_path,
                                                    monkeypatch):
    """A second run killed after two shards, then resumed: nothing written twice, and every
    shard byte-equal to the uninterrupted run's (resumed shards hold the same examples)."""
    cfg_a, _ = run_a
    cfg = _config(tmp_path, cifar20, f"diffusemix.model={ip2p_path}")
    real_edit = E.edit_images
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated kill")
        return real_edit(*args, **kwargs)

    monkeypatch.setattr(E, "edit_images", dying)
    with pytest.raises(KeyboardInterrupt):
        DM.generate(cfg)
    edits_dir, hyb_dir = DM.store_dirs(cfg)
    assert len(_shard_keys(edits_dir)) == 16  # two complete shards of 8
    assert not glob.glob(os.path.join(edits_dir, "*.tmp-*"))
    monkeypatch.setattr(E, "edit_images", real_edit)
    summary = DM.generate(cfg)
    assert summary["edits_summary"]["written"] == 2 * N_REAL - 16
    for d in (edits_dir, hyb_dir):
        keys = _shard_keys(d)
        assert len(keys) == len(set(keys)) == 2 * N_REAL
    # Byte for byte: every decoded image and provenance equals the uninterrupted run's ...
    a_edits, a_hyb = DM.store_dirs(cfg_a)
    assert _decoded(edits_dir) == _decoded(a_edits)
    assert _decoded(hyb_dir) == _decoded(a_hyb)
    # ... and with the same shard boundaries (8 | 16) the shard files are identical too.
    for d, a in ((edits_dir, a_edits), (hyb_dir, a_hyb)):
        mine = sorted(glob.glob(os.path.join(d, "shard-*.array_record")))
        assert len(mine) == 5
        for f in mine:
            with open(f, "rb") as x, open(os.path.join(a, os.path.basename(f)), "rb") as y:
                assert x.read() == y.read()


def test_black_and_nonfinite_filtered_counted_once(cifar20, ip2p_path, tmp_path, monkeypatch):
    """Outputs are replaced by constructed images: every 5th edit black, every 7th NaN; the
    manifest counts them, they are not stored, and a resumed run neither retries nor recounts."""
    cfg = _config(tmp_path, cifar20, f"diffusemix.model={ip2p_path}",
                  "diffusemix.write_hybrids=False")

    def fake_edit(components, params, images, prompt_embeds, keys, **kw):
        n, res = len(images), kw["resolution"]
        base = np.linspace(0.2, 0.9, n * res * res * 3, dtype=np.float32)
        return base.reshape(n, res, res, 3)

    plan = {tuple(np.asarray(example_keys(E.run_keys(0)[0], [e]))[0]): e
            for e in range(2 * N_REAL)}

    def fake_with_failures(components, params, images, prompt_embeds, keys, **kw):
        out = fake_edit(components, params, images, prompt_embeds, keys, **kw)
        for b, k in enumerate(np.asarray(keys)):
            e = plan.get(tuple(k))
            if e is not None and e % 5 == 0:
                out[b] = 0.0
            elif e is not None and e % 7 == 0:
                out[b, 0, 0, 0] = np.nan
        return out

    monkeypatch.setattr(E, "edit_images", fake_with_failures)
    summary = DM.generate(cfg)["edits_summary"]
    black = [e for e in range(2 * N_REAL) if e % 5 == 0]
    nan = [e for e in range(2 * N_REAL) if e % 5 and e % 7 == 0]
    assert summary["filtered_black"] == len(black) and summary["filtered_nonfinite"] == len(nan)
    edits_dir, _ = DM.store_dirs(cfg)
    store = SyntheticStore(edits_dir)
    assert len(store) == 2 * N_REAL - len(black) - len(nan)
    assert store.manifest["counters"] == {"filtered_black": len(black),
                                          "filtered_nonfinite": len(nan)}
    kept = {store.provenance(i)["example"] for i in range(len(store))}
    assert kept.isdisjoint(black + nan)
    again = DM.generate(cfg)["edits_summary"]  # resume: nothing left to do
    assert again["written"] == 0 and again["filtered_black"] == 0
    assert SyntheticStore(edits_dir).manifest["counters"] == store.manifest["counters"]


@pytest.mark.slow
def test_online_pairs_match_offline_hybrids_and_redraw(run_a):
    """The online hook pairs each edit with its parent; with the offline policy it reproduces
    the stored hybrids, with the online policy masks change between epochs."""
    from augdiff.data.sources import open_real_source

    cfg, _ = run_a
    real = open_real_source(cfg.data, "train")
    edits_dir, hyb_dir = DM.store_dirs(cfg)
    edits, hyb = SyntheticStore(edits_dir), SyntheticStore(hyb_dir)
    pairs = O.make_online(
        load_config(f"{CONFIG}:smoke", ["online.kind=diffusemix", "data.image_size=16"]),
        real, edits)
    assert pairs.spec.policy == "offline"
    rows = [0, 5, 11, 30]
    batch = {
        "image": np.stack([edits[r]["image"] for r in rows] + [real[2]["image"]]),
        "index": np.asarray(rows + [2]),
        "source": np.asarray([1, 1, 1, 1, 0], np.int32),
        "weight": np.ones(5, np.float32),
        "label": np.asarray([int(edits[r]["label"]) for r in rows] + [0], np.int32),
    }
    host = pairs.host(batch)
    for b, r in enumerate(rows):
        p = edits.provenance(r)
        np.testing.assert_array_equal(host["original"][b], real[p["parent"]]["image"])
        assert host["pair_id"][b] == p["example"]
    assert host["pair_id"][4] == -1
    dev = {k: jnp.asarray(v) for k, v in host.items()}
    dev["image"] = dev["image"].astype(jnp.float32) / 127.5 - 1.0
    out = jax.jit(pairs.device)(dev, 3)
    got = hybrids.to_uint8(out["image"])
    by_pair = {hyb.provenance(i)["pair_id"]: i for i in range(len(hyb))}
    for b in range(4):
        ref = hyb[by_pair[int(host["pair_id"][b])]]
        diff = np.abs(got[b].astype(int) - ref["image"].astype(int))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # same keys, same transform
        assert float(out["weight"][b]) == pytest.approx(float(ref["weight"]), abs=1e-6)
    np.testing.assert_array_equal(got[4], real[2]["image"])  # real rows untouched
    assert float(out["weight"][4]) == 1.0
    spec = hybrids.DiffuseMixSpec(mask="random", policy="online", fractal=False)
    online = O.OnlinePairs(real, edits, spec=spec, key=pairs.key, fractals=None,
                            parents=pairs.parents, pair_ids=pairs.pair_ids)
    device = jax.jit(online.device)
    e0, e1 = (np.asarray(device(dev, t)["image"]) for t in (0, 1))
    for b in range(4):  # each pair's rectangle is redrawn between epochs
        assert np.abs(e0[b] - e1[b]).max() > 0.05
    np.testing.assert_array_equal(e0, np.asarray(device(dev, 0)["image"]))

    # The trainer's hook: a step with `online` equals a step on the pre-transformed batch.
    _check_train_step_hook(pairs, host)


def _check_train_step_hook(pairs, host):
    import flax.linen as nn
    import optax

    from augdiff import distributed
    from augdiff.train import classifier as C

    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.BatchNorm(use_running_average=not train)(x.reshape(x.shape[0], -1))
            return nn.Dense(10)(x)

    mesh = distributed.make_mesh()
    n = 8
    rows = np.arange(n) % len(host["image"])
    batch = {k: np.asarray(v)[rows] for k, v in host.items()}
    batch["label"] = batch["label"].astype(np.int32)
    model, tx = Tiny(), optax.sgd(0.1)
    state = C.create_train_state(jax.random.PRNGKey(0), model, tx, (16, 16, 3))
    state = jax.device_put(state, C.state_sharding(state, mesh))
    aug = {"crop_flip": False}
    hooked = C.make_train_step(model, tx, mesh, state, num_classes=10, loss_kind="bce",
                               augment=aug, donate=False, online=pairs.device,
                               online_keys=pairs.extra_keys, steps_per_epoch=4)
    plain = C.make_train_step(model, tx, mesh, state, num_classes=10, loss_kind="bce",
                              augment=aug, donate=False)
    # state.step = 0 -> epoch 0; transform the batch by hand the same way.
    dev = {k: jnp.asarray(v) for k, v in batch.items()}
    dev["image"] = dev["image"].astype(jnp.float32) / 127.5 - 1.0
    ref = jax.jit(pairs.device)(dev, 0)
    keys = ("image", "label", "weight", "source")
    pre = {k: np.asarray(batch[k]) for k in keys}
    pre["image"] = hybrids.to_uint8(ref["image"])
    pre["weight"] = np.asarray(ref["weight"])
    s1, m1 = hooked(state, distributed.shard_batch(
        {k: batch[k] for k in keys + pairs.extra_keys}, mesh))
    s2, m2 = plain(state, distributed.shard_batch(pre, mesh))
    assert float(m1["synthetic_share"]) == pytest.approx(np.mean(batch["source"] > 0))
    # uint8 re-quantisation of the pre-transformed images costs at most half a level.
    assert float(m1["loss"]) == pytest.approx(float(m2["loss"]), rel=2e-2)
    assert np.any(np.asarray(batch["weight"]) != np.asarray(ref["weight"]))  # Lsf weights


@pytest.mark.slow
def test_semantic_hybrids_with_tiny_clip(run_a, tmp_path):
    """SHB offline through a tiny random FlaxCLIPModel; the store records which CLIP was used
    and holds exactly the jitted SHB of each pair."""
    from augdiff.data.sources import open_real_source
    from augdiff.methods import semantic

    cfg, _ = run_a
    edits_dir, _ = DM.store_dirs(cfg)
    scfg = load_config(f"{CONFIG}:smoke", [
        f"workdir={tmp_path}", f"data.path={cfg.data.path}", "data.per_class=0",
        "data.image_size=16", "diffusemix.hybrid.mask=semantic", "diffusemix.hybrid.fractal=False",
        "diffusemix.hybrid.label_scaling=False", "diffusemix.shb.tiny=True", "progress=False"])
    real = open_real_source(scfg.data, "train")
    _, hkey, fkey = E.run_keys(0)
    out = tmp_path / "shb"
    summary = DM._generate_hybrids(scfg, real, edits_dir, str(out), hkey, fkey, False)
    assert summary == {"written": 2 * N_REAL, "mask": "semantic", "clip": "tiny-random"}
    store = SyntheticStore(out)
    assert store.manifest["config"]["clip"] == "tiny-random"
    model, params, tok, _ = S.load_clip(scfg.diffusemix.shb, str(tmp_path), 0)
    text = S.class_text_embeddings(model, params, tok, real.class_names, "a photo of a {}")
    assert text.shape == (10, 32)
    edits = SyntheticStore(edits_dir)
    r = 4
    p = edits.provenance(r)
    o = hybrids.to_float(real[p["parent"]]["image"][None])
    g = hybrids.to_float(edits[r]["image"][None])
    lab = jnp.asarray([edits[r]["label"]])
    # The edits were made at 16² (= the training size): crops of 2 px at stride 1 (the code's
    # 32/16 at 256², scaled), a 15 × 15 map, CLIP image embeddings of each crop.
    embed = semantic.clip_image_embedding_fn(model, params)
    s = semantic.crop_similarity_map(embed, g, text, lab, crop=2, stride=1)
    assert s.shape == (1, 15, 15)
    want, mask = semantic.semantic_hybrid(o, g, s)
    row = next(i for i in range(len(store)) if store.provenance(i)["pair_id"] == p["example"])
    diff = np.abs(hybrids.to_uint8(want)[0].astype(int) - store[row]["image"].astype(int))
    assert diff.max() <= 1
    assert store.provenance(row)["hybrid"]["clip"] == "tiny-random"
    assert store.provenance(row)["hybrid"]["resolution"] == 16
    assert float(jnp.mean(mask)) == pytest.approx(0.5, abs=0.05)
