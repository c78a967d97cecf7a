"""Converted-weights cache of ``augdiff.sd.loading``: a second load of the same PyTorch
checkpoint reads the Flax-layout copy (no conversion) and gives equal weights; a changed
source file is converted again."""

import json
import os
import struct

import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from safetensors.numpy import load_file

from augdiff.sd import loading, tiny


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("wcache")
    return tiny.make_tiny_sd(root / "m", kind="txt2img", seed=5, formats=("pytorch",))


def _flat(params):
    return {k: np.asarray(v) for k, v in flatten_dict(jax.device_get(params)).items()}


def test_second_load_uses_cache_and_a_changed_source_invalidates_it(model_dir, tmp_path,
                                                                    monkeypatch):
    monkeypatch.setenv("AUGDIFF_WEIGHTS_CACHE", str(tmp_path / "cache"))
    comps1, p1 = loading.load_sd(model_dir, weights="pytorch")
    assert comps1.info["weights_cache"] == {"unet": "miss", "vae": "miss",
                                            "text_encoder": "miss"}
    assert len([f for f in os.listdir(tmp_path / "cache") if f.endswith(".msgpack")]) == 3

    real_convert = loading.convert_pt_state_dict

    def no_conversion(*a, **k):
        raise AssertionError("converted again although the cache holds this source")

    monkeypatch.setattr(loading, "convert_pt_state_dict", no_conversion)
    comps2, p2 = loading.load_sd(model_dir, weights="pytorch")
    assert comps2.info["weights_cache"] == {"unet": "hit", "vae": "hit", "text_encoder": "hit"}
    f1, f2 = _flat(p1), _flat(p2)
    assert f1.keys() == f2.keys()
    for k in f1:
        np.testing.assert_array_equal(f1[k], f2[k])

    # Change one UNet weight in the source: the UNet is converted again, the rest still hits.
    monkeypatch.setattr(loading, "convert_pt_state_dict", real_convert)
    # Edit the tensor's bytes in place: same size, same header, only content (and mtime)
    # change, so nothing but the content hash can tell.
    path = os.path.join(model_dir, "unet", "diffusion_pytorch_model.safetensors")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        entry = json.loads(f.read(n))["conv_in.bias"]
        assert entry["dtype"] == "F32"
        start, stop = entry["data_offsets"]
        f.seek(8 + n + start)
        old = np.frombuffer(f.read(stop - start), np.float32)
        f.seek(8 + n + start)
        f.write((old + 1.0).astype(np.float32).tobytes())
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert os.path.getsize(path) == size
    np.testing.assert_array_equal(load_file(path)["conv_in.bias"], old + 1.0)
    comps3, p3 = loading.load_sd(model_dir, weights="pytorch")
    assert comps3.info["weights_cache"] == {"unet": "miss", "vae": "hit", "text_encoder": "hit"}
    f3 = _flat(p3)
    np.testing.assert_allclose(f3[("unet", "conv_in", "bias")],
                               f1[("unet", "conv_in", "bias")] + 1.0, rtol=1e-6)


def test_cache_off(model_dir, monkeypatch):
    monkeypatch.setenv("AUGDIFF_WEIGHTS_CACHE", "off")
    comps, _ = loading.load_sd(model_dir, weights="pytorch")
    assert set(comps.info["weights_cache"].values()) == {"off"}


def test_damaged_copy_is_replaced(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("AUGDIFF_WEIGHTS_CACHE", str(tmp_path / "c"))
    _, p1 = loading.load_sd(model_dir, weights="pytorch")
    for f in os.listdir(tmp_path / "c"):
        if f.startswith("vae-"):
            (tmp_path / "c" / f).write_bytes(b"not msgpack")
    with pytest.warns(UserWarning, match="bad cached copy"):
        comps, p2 = loading.load_sd(model_dir, weights="pytorch")
    assert comps.info["weights_cache"]["vae"] == "miss"
    np.testing.assert_array_equal(_flat(p1)[("vae", "encoder", "conv_in", "kernel")],
                                  _flat(p2)[("vae", "encoder", "conv_in", "kernel")])
