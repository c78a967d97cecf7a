"""The shipped generator: export of EMA parameters, loading through the user-checkpoint path."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from augdiff.config import load_config

CONFIG = "augdiff/configs/generator_cifar10.py:test"


def _cfg(repo_root, cifar_zip, workdir, store):
    c = load_config(str(repo_root / CONFIG))
    c.workdir = str(workdir)
    c.data.path = str(cifar_zip)
    c.data.image_size = 8
    c.num_samples = 6
    c.sample.store = str(store)
    c.sample.grid = 0
    return c


@pytest.fixture(scope="module")
def trained(repo_root, cifar_zip, tmp_path_factory):
    from augdiff.edm.train import train

    root = tmp_path_factory.mktemp("gen")
    c = _cfg(repo_root, cifar_zip, root / "run", root / "unused")
    train(c)
    return root


def _images(store):
    from augdiff.data.store import SyntheticStore

    s = SyntheticStore(str(store))
    order = np.argsort([s.provenance(i)["key"] for i in range(len(s))])
    return np.stack([np.asarray(s[int(i)]["image"]) for i in order]), np.asarray(s.labels)[order]


def test_export_loads_through_the_user_checkpoint_path(trained, repo_root, cifar_zip):
    from augdiff.edm import sampling
    from augdiff.edm.assets import directory_bytes, export_generator, generator_info

    out32 = trained / "asset32"
    out16 = trained / "asset16"
    export_generator(str(trained / "run"), str(out32), dtype="float32", info={"note": "x"})
    export_generator(str(trained / "run"), str(out16), dtype="float16")
    ref = sampling.sample_to_store(_cfg(repo_root, cifar_zip, trained / "run", trained / "s0"))
    got32 = sampling.sample_to_store(_cfg(repo_root, cifar_zip, out32, trained / "s1"))
    got16 = sampling.sample_to_store(_cfg(repo_root, cifar_zip, out16, trained / "s2"))
    assert ref["checkpoint_step"] == got32["checkpoint_step"] == got16["checkpoint_step"] == 4
    a, la = _images(trained / "s0")
    b, lb = _images(trained / "s1")
    c, lc = _images(trained / "s2")
    assert np.array_equal(a, b) and np.array_equal(la, lb) and np.array_equal(la, lc)
    # float16 storage of the EMA weights moves a pixel by at most a few levels
    assert np.max(np.abs(a.astype(int) - c.astype(int))) <= 8
    assert directory_bytes(str(out16)) < directory_bytes(str(trained / "run"))
    info = generator_info(str(out32))
    assert info["step"] == 4 and info["storage_dtype"] == "float32" and info["note"] == "x"
    with open(os.path.join(out32, "config.json")) as f:
        assert json.load(f)["model"]["model_channels"] == 16
    assert generator_info(str(trained / "run")) is None


def test_exported_generator_refuses_another_model(trained, repo_root, cifar_zip):
    from augdiff.config import ConfigError
    from augdiff.edm import sampling
    from augdiff.edm.assets import export_generator

    out = trained / "asset_other"
    export_generator(str(trained / "run"), str(out))
    c = _cfg(repo_root, cifar_zip, out, trained / "s3")
    c.model.model_channels = 32
    with pytest.raises(ConfigError, match="model.model_channels"):
        sampling.sample_to_store(c)


def test_shipped_generator_loads_with_the_config_the_quickstart_uses(repo_root):
    """The checkpoint inside the package loads through ``load_model`` with the quickstart's
    generator config, as recorded at export time (``generator.json``): same step, same
    parameter count. A model-defining config change that the shipped weights do not follow
    (a new field, another preset) fails here instead of in the main job."""
    import jax

    from augdiff.edm import model as edm_model

    asset = repo_root / "augdiff/assets/generator_cifar10"
    record = json.loads((asset / "generator.json").read_text())
    c = load_config(str(repo_root / "augdiff/configs/generator_cifar10.py"))
    c.workdir = str(asset)
    loaded = edm_model.load_model(c)
    assert loaded.step == record["step"] == 4000
    assert loaded.num_classes == record["num_classes"] == 10
    n = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(loaded.params))
    assert n == record["num_params"] == 750_243
    # the names of its labels, so a store sampled from it names its classes: CIFAR-10's class
    # folders in sorted order (label order), as the CIFAR-10 README lists them
    assert loaded.extras["class_names"] == ["airplane", "automobile", "bird", "cat", "deer",
                                            "dog", "frog", "horse", "ship", "truck"]
