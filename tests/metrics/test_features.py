"""Feature extractors: the Flax FID Inception-v3 and its weight loader, the classifier
extractor restored from a trainer checkpoint, and ``augdiff evaluate`` end to end."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from augdiff.metrics import inception

# -------------------------------------------------------------- Inception-v3: architecture

# Every BasicConv2d of torchvision's Inception-v3 with pytorch-fid's FID blocks, as
# (in, out, kh, kw), written out from the reference architecture independently of the Flax code.


def _reference_convs():
    convs = [(3, 32, 3, 3), (32, 32, 3, 3), (32, 64, 3, 3), (64, 80, 1, 1), (80, 192, 3, 3)]

    def block_a(cin, pool):
        return [(cin, 64, 1, 1), (cin, 48, 1, 1), (48, 64, 5, 5), (cin, 64, 1, 1),
                (64, 96, 3, 3), (96, 96, 3, 3), (cin, pool, 1, 1)]

    def block_c(c7):
        return [(768, 192, 1, 1), (768, c7, 1, 1), (c7, c7, 1, 7), (c7, 192, 7, 1),
                (768, c7, 1, 1), (c7, c7, 7, 1), (c7, c7, 1, 7), (c7, c7, 7, 1),
                (c7, 192, 1, 7), (768, 192, 1, 1)]

    def block_e(cin):
        return [(cin, 320, 1, 1), (cin, 384, 1, 1), (384, 384, 1, 3), (384, 384, 3, 1),
                (cin, 448, 1, 1), (448, 384, 3, 3), (384, 384, 1, 3), (384, 384, 3, 1),
                (cin, 192, 1, 1)]

    convs += block_a(192, 32) + block_a(256, 64) + block_a(288, 64)
    convs += [(288, 384, 3, 3), (288, 64, 1, 1), (64, 96, 3, 3), (96, 96, 3, 3)]  # 6a
    for c7 in (128, 160, 160, 192):
        convs += block_c(c7)
    convs += [(768, 192, 1, 1), (192, 320, 3, 3), (768, 192, 1, 1), (192, 192, 1, 7),
              (192, 192, 7, 1), (192, 192, 3, 3)]  # 7a
    convs += block_e(1280) + block_e(2048)
    return convs


def test_inception_param_count_matches_reference_architecture():
    abstract = inception.abstract_variables()
    ref = sum(i * o * kh * kw + 2 * o for i, o, kh, kw in _reference_convs())  # conv + BN γ, β
    assert inception.param_count(abstract) == ref == 21_785_568
    assert len(inception.state_dict_from_variables(abstract)) == 94 * 5  # 94 BasicConv2d


# ---------------------------------------------------------- Inception-v3: weights round trip


@pytest.fixture(scope="module")
def random_state_dict():
    """A random-weight FID Inception state dict in PyTorch layout (He-scaled convs)."""
    rng = np.random.default_rng(0)
    sd = {}
    for key, a in inception.state_dict_from_variables(inception.abstract_variables()).items():
        if key.endswith("conv.weight"):
            fan_in = np.prod(a.shape[1:])
            sd[key] = rng.normal(0, np.sqrt(2.0 / fan_in), a.shape).astype(np.float32)
        elif key.endswith("running_var"):
            sd[key] = rng.uniform(0.5, 1.5, a.shape).astype(np.float32)
        elif key.endswith("bn.weight"):
            sd[key] = rng.uniform(0.8, 1.2, a.shape).astype(np.float32)
        else:
            sd[key] = rng.normal(0, 0.1, a.shape).astype(np.float32)
    sd["fc.weight"] = rng.normal(size=(1008, 2048)).astype(np.float32)
    sd["fc.bias"] = np.zeros(1008, np.float32)
    return sd


@pytest.fixture(scope="module")
def inception_forward():
    model = inception.FIDInceptionV3()
    return jax.jit(model.apply)


def _torch_reference_forward(sd, images_uint8):
    """pytorch-fid's FID Inception forward written with torch.nn.functional over ``sd``."""
    import torch
    import torch.nn.functional as F

    w = {k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}

    def conv(x, name, stride=1, padding=0):
        x = F.conv2d(x, w[f"{name}.conv.weight"], stride=stride, padding=padding)
        x = F.batch_norm(x, w[f"{name}.bn.running_mean"], w[f"{name}.bn.running_var"],
                         w[f"{name}.bn.weight"], w[f"{name}.bn.bias"], False, 0.0, 1e-3)
        return F.relu(x)

    def avg(x):
        return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)

    def block_a(x, n):
        b5 = conv(conv(x, f"{n}.branch5x5_1"), f"{n}.branch5x5_2", padding=2)
        b3 = conv(conv(conv(x, f"{n}.branch3x3dbl_1"), f"{n}.branch3x3dbl_2", padding=1),
                  f"{n}.branch3x3dbl_3", padding=1)
        return torch.cat([conv(x, f"{n}.branch1x1"), b5, b3, conv(avg(x), f"{n}.branch_pool")], 1)

    def block_c(x, n):
        b7 = conv(x, f"{n}.branch7x7_1")
        b7 = conv(b7, f"{n}.branch7x7_2", padding=(0, 3))
        b7 = conv(b7, f"{n}.branch7x7_3", padding=(3, 0))
        bd = conv(x, f"{n}.branch7x7dbl_1")
        for i, p in zip(range(2, 6), [(3, 0), (0, 3), (3, 0), (0, 3)], strict=True):
            bd = conv(bd, f"{n}.branch7x7dbl_{i}", padding=p)
        return torch.cat([conv(x, f"{n}.branch1x1"), b7, bd, conv(avg(x), f"{n}.branch_pool")], 1)

    def block_e(x, n, pool):
        b3 = conv(x, f"{n}.branch3x3_1")
        b3 = torch.cat([conv(b3, f"{n}.branch3x3_2a", padding=(0, 1)),
                        conv(b3, f"{n}.branch3x3_2b", padding=(1, 0))], 1)
        bd = conv(conv(x, f"{n}.branch3x3dbl_1"), f"{n}.branch3x3dbl_2", padding=1)
        bd = torch.cat([conv(bd, f"{n}.branch3x3dbl_3a", padding=(0, 1)),
                        conv(bd, f"{n}.branch3x3dbl_3b", padding=(1, 0))], 1)
        return torch.cat([conv(x, f"{n}.branch1x1"), b3, bd, conv(pool(x), f"{n}.branch_pool")], 1)

    with torch.no_grad():
        x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 255.0
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = conv(x, "Conv2d_1a_3x3", stride=2)
        x = conv(x, "Conv2d_2a_3x3")
        x = F.max_pool2d(conv(x, "Conv2d_2b_3x3", padding=1), 3, 2)
        x = F.max_pool2d(conv(conv(x, "Conv2d_3b_1x1"), "Conv2d_4a_3x3"), 3, 2)
        for n in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
            x = block_a(x, n)
        b3 = conv(x, "Mixed_6a.branch3x3", stride=2)
        bd = conv(conv(x, "Mixed_6a.branch3x3dbl_1"), "Mixed_6a.branch3x3dbl_2", padding=1)
        bd = conv(bd, "Mixed_6a.branch3x3dbl_3", stride=2)
        x = torch.cat([b3, bd, F.max_pool2d(x, 3, 2)], 1)
        for n in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
            x = block_c(x, n)
        b3 = conv(conv(x, "Mixed_7a.branch3x3_1"), "Mixed_7a.branch3x3_2", stride=2)
        b7 = conv(x, "Mixed_7a.branch7x7x3_1")
        b7 = conv(b7, "Mixed_7a.branch7x7x3_2", padding=(0, 3))
        b7 = conv(b7, "Mixed_7a.branch7x7x3_3", padding=(3, 0))
        b7 = conv(b7, "Mixed_7a.branch7x7x3_4", stride=2)
        x = torch.cat([b3, b7, F.max_pool2d(x, 3, 2)], 1)
        x = block_e(x, "Mixed_7b", avg)
        x = block_e(x, "Mixed_7c", lambda z: F.max_pool2d(z, 3, stride=1, padding=1))
        return x.mean(dim=(2, 3)).numpy()


@pytest.mark.slow
def test_inception_loader_round_trip_and_torch_parity(tmp_path, random_state_dict,
                                                      inception_forward):
    images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    # .npz round trip: file -> loader -> Flax variables equal to the state dict, and back.
    np.savez(tmp_path / "w.npz", **random_state_dict)
    variables = inception.load_variables(tmp_path / "w.npz")
    back = inception.state_dict_from_variables(variables)
    for k, v in back.items():
        np.testing.assert_array_equal(v, random_state_dict[k], err_msg=k)
    feats = np.asarray(inception_forward(variables, images))
    assert feats.shape == (2, 2048) and np.all(feats >= 0)
    torch = pytest.importorskip("torch")
    # .pth (torch.save of the state dict, as pytorch-fid ships it) gives identical outputs.
    torch.save({k: torch.from_numpy(v) for k, v in random_state_dict.items()}, tmp_path / "w.pth")
    feats_pth = np.asarray(inception_forward(inception.load_variables(tmp_path / "w.pth"), images))
    np.testing.assert_array_equal(feats_pth, feats)
    # Parity with pytorch-fid's forward written independently in torch.
    ref = _torch_reference_forward(random_state_dict, images)
    np.testing.assert_allclose(feats, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())


def test_inception_resize_matches_torch_interpolate():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(2).uniform(size=(2, 40, 24, 3)).astype(np.float32)
    for size in (299, 17):  # up- and down-sampling (no antialiasing, as PyTorch)
        got = np.asarray(inception.resize_bilinear(jnp.asarray(x), size))
        ref = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2),
                                              size=(size, size), mode="bilinear",
                                              align_corners=False).permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(got, ref, atol=1e-5)


def test_inception_missing_or_mismatched_weights_are_clear_errors(tmp_path, random_state_dict):
    from augdiff.metrics.features import get_extractor

    cfg = ml_collections.ConfigDict({"name": "inception_v3", "weights": str(tmp_path / "no.pth")})
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05"):
        get_extractor(cfg)
    with pytest.raises(FileNotFoundError, match="no file given"):
        inception.load_variables("")
    bad = dict(random_state_dict)
    del bad["Mixed_7c.branch_pool.conv.weight"]
    bad["extra.weight"] = np.zeros(3, np.float32)
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(ValueError, match="Mixed_7c.branch_pool.conv.weight"):
        inception.load_variables(tmp_path / "bad.npz")
    wrong = dict(random_state_dict)
    wrong["Conv2d_1a_3x3.conv.weight"] = np.zeros((32, 3, 5, 5), np.float32)
    np.savez(tmp_path / "wrong.npz", **wrong)
    with pytest.raises(ValueError, match=r"Conv2d_1a_3x3.conv.weight has shape \(32, 3, 5, 5\)"):
        inception.load_variables(tmp_path / "wrong.npz")
    with pytest.raises(ValueError, match="unknown"):
        get_extractor(ml_collections.ConfigDict({"name": "vgg"}))


# ------------------------------------------------------------------- classifier extractor


@pytest.fixture(scope="module")
def tiny_classifier_ckpt(tmp_path_factory):
    """A tiny classifier train state saved by the trainer's Checkpointer (with SGD state)."""
    import optax

    from augdiff import distributed
    from augdiff.models.classifiers import abstract_variables, get_classifier
    from augdiff.train.checkpoint import Checkpointer
    from augdiff.train.classifier import TrainState

    model = get_classifier("preact_resnet_tiny", 10, width=8)
    abstract = abstract_variables(model, 32)
    rng = np.random.default_rng(3)

    def rand(a):
        return jnp.asarray(rng.normal(0, 0.2, a.shape).astype(np.float32))

    params = jax.tree_util.tree_map(rand, abstract["params"])
    stats = jax.tree_util.tree_map(lambda a: jnp.abs(rand(a)) + 0.5, abstract["batch_stats"])
    tx = optax.sgd(0.1, momentum=0.9)
    state = TrainState(params=params, batch_stats=stats, opt_state=tx.init(params),
                       step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(0))
    state = jax.device_put(state, distributed.replicated(distributed.make_mesh()))
    path = tmp_path_factory.mktemp("clf") / "checkpoints"
    with Checkpointer(path) as ckpt:
        ckpt.save(7, state, {"epoch": 1})
    return model, state, str(path)


@pytest.mark.slow
def test_classifier_extractor_restores_penultimate_features(tiny_classifier_ckpt):
    from augdiff.metrics.features import get_extractor

    model, state, path = tiny_classifier_ckpt
    cfg = ml_collections.ConfigDict({"name": "classifier", "checkpoint": path,
                                     "classifier": "preact_resnet_tiny", "width": 8,
                                     "image_size": 32, "batch_size": 16})
    ex = get_extractor(cfg, num_classes=10)
    assert ex.name.startswith("classifier:preact_resnet_tiny-w8")
    images = np.random.default_rng(4).integers(0, 256, (21, 32, 32, 3), dtype=np.uint8)
    feats = ex(images)  # 21 rows: padded to the 8-device mesh, then trimmed
    direct = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                         jnp.asarray(images, jnp.float32) / 127.5 - 1.0, train=False,
                         method="features")
    assert feats.shape == (21, ex.dim)
    np.testing.assert_allclose(feats, np.asarray(direct), rtol=1e-4, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="checkpoint directory"):
        get_extractor(ml_collections.ConfigDict({"name": "classifier", "checkpoint": "/nope"}),
                      num_classes=10)
    with pytest.raises(ValueError, match="does not match"):
        get_extractor(ml_collections.ConfigDict({**cfg.to_dict(), "width": 16}), num_classes=10)


# ------------------------------------------------------------------------ augdiff evaluate


@pytest.mark.slow
def test_evaluate_command_on_real_data(tmp_path, cifar_zip, repo_root):
    """A store holding 60 exact training images and 60 noisy test images, evaluated by the
    command: metrics.json names the extractor everywhere and replication finds the copies."""
    from augdiff.commands.evaluate import main
    from augdiff.config import load_config
    from augdiff.data.sources import open_real_source
    from augdiff.data.store import StoreWriter

    config = load_config(str(repo_root / "augdiff/configs/evaluate_cifar10.py:smoke"))
    config.data.path = str(cifar_zip)
    config.data.per_class = 20  # a 200-image training subset: the replication reference set
    data = config.data
    train = open_real_source(data, "train")
    test = open_real_source(data, "test")
    rng = np.random.default_rng(5)
    copy_rows = rng.choice(len(train), 60, replace=False)
    store = tmp_path / "store"
    with StoreWriter(str(store), method="test", config={"num_classes": 10}) as w:
        for i in copy_rows:
            r = train[int(i)]
            w.add(f"copy-{i}", r["image"], int(r["label"]))
        for i in rng.choice(len(test), 60, replace=False):
            r = test[int(i)]
            noisy = np.clip(r["image"] + rng.normal(0, 25, r["image"].shape), 0, 255)
            w.add(f"noisy-{i}", noisy.astype(np.uint8), int(r["label"]))
    workdir = tmp_path / "eval"
    # Overrides set on the loaded config (what `--config.a.b=v` does on the command line).
    config.evaluate.store = str(store)
    config.workdir = str(workdir)
    config.extractor.random_init = True
    config.evaluate.max_real = 200
    config.evaluate.max_train = 0  # the whole 200-image subset
    config.evaluate.kid_subset_size = 50
    rc = main(config)
    assert rc == 0
    out = json.loads((workdir / "metrics.json").read_text())
    name = out["extractor"]
    assert "random-init" in name
    for m in ("fid", "kid", "precision", "recall", "density", "coverage", "replication"):
        assert out[m]["extractor"] == name, m
    assert out["synthetic"]["num_images"] == 120 and out["real"]["num_images"] == 200
    assert out["fid"]["value"] > 0 and 0 <= out["precision"]["value"] <= 1
    rep = out["replication"]
    # The 60 exact copies have SSIM 1 to their nearest training image; noisy test images do not.
    assert rep["ssim_max"] == pytest.approx(1.0, abs=1e-5)
    assert rep["near_copy_share"] == pytest.approx(0.5, abs=0.05)
