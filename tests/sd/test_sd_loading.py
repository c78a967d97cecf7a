"""Must-show 4: Flax- and PyTorch-safetensors-format folders load to the same weights and
give the same outputs; missing / mismatched components fail with errors naming them; an
unCLIP model never loads without its image conditioning."""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from augdiff.sd import loading, pipelines, tiny

torch_available = True
try:
    import torch  # noqa: F401
except ImportError:
    torch_available = False


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("sd_loading")


@pytest.fixture(scope="module")
def flax_dir(root):
    return tiny.make_tiny_sd(root / "flax", kind="txt2img", seed=3, formats=("flax",))


def test_tiny_folder_says_it_is_random(flax_dir):
    comps, _ = loading.load_sd(flax_dir)
    assert comps.info["tiny_random"] and loading.model_label(comps) == "tiny-random"
    with open(os.path.join(flax_dir, "model_index.json")) as f:
        assert json.load(f)["augdiff_tiny_random"] is True
    assert comps.kind == "txt2img" and comps.vae_scale_factor == 2
    assert pipelines.tokenize(comps, "a cat").shape == (1, tiny.MAX_LENGTH)


@pytest.mark.torch
@pytest.mark.slow
def test_flax_and_pytorch_folders_agree(root, flax_dir):
    pytest.importorskip("torch")
    pt_dir = tiny.make_tiny_sd(root / "pt", kind="txt2img", seed=3, formats=("pytorch",))
    assert not any(f.endswith(".msgpack") for _, _, fs in os.walk(pt_dir) for f in fs)
    cf, pf = loading.load_sd(flax_dir)
    cp, pp = loading.load_sd(pt_dir)
    assert cp.info["weights_format"] == "pytorch" and cf.info["weights_format"] == "flax"
    a, b = flatten_dict(pf), flatten_dict(pp)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=str(k))
    key = jax.random.PRNGKey(0)
    kw = dict(guidance_scale=2.0, num_steps=2, sampler="ddim")
    out_f = pipelines.text2img(cf, pf, ["a cat"], key, **kw)
    out_p = pipelines.text2img(cp, pp, ["a cat"], key, **kw)
    np.testing.assert_array_equal(out_f, out_p)


@pytest.mark.parametrize("component", ["unet", "vae", "text_encoder", "tokenizer", "scheduler"])
def test_missing_component_is_named(root, flax_dir, component):
    broken = root / f"no_{component}"
    if not broken.exists():
        shutil.copytree(flax_dir, broken)
        shutil.rmtree(broken / component)
    with pytest.raises(loading.ModelLoadError, match=component):
        loading.load_sd(broken)


def test_mismatched_and_corrupt_components(root, flax_dir):
    bad = root / "mismatch"
    shutil.copytree(flax_dir, bad)
    cfg_path = bad / "unet" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["cross_attention_dim"] = 48  # the weights are for 32
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(loading.ModelLoadError, match="'unet'"):
        loading.load_sd(bad)
    cfg["cross_attention_dim"] = 32
    cfg_path.write_text(json.dumps(cfg))
    (bad / "vae" / "diffusion_flax_model.msgpack").unlink()
    with pytest.raises(loading.ModelLoadError, match="'vae'"):
        loading.load_sd(bad, weights="flax")
    with pytest.raises(loading.ModelLoadError, match="weights must be"):
        loading.load_sd(flax_dir, weights="onnx")
    with pytest.raises(loading.ModelLoadError, match="neither a local directory"):
        loading.load_sd("no-such-org/no-such-model")
    with pytest.raises(loading.ModelLoadError, match="expected a 'ip2p' model"):
        loading.load_sd(flax_dir, kind="ip2p")


@pytest.fixture(scope="module")
def unclip_dir(root):
    return tiny.make_tiny_sd(root / "unclip", kind="unclip", seed=5, formats=("flax",))


def test_unclip_loads_with_its_image_conditioning(unclip_dir):
    comps, params = loading.load_sd(unclip_dir, dtype=jnp.bfloat16)
    assert comps.kind == "unclip"
    assert params["class_embedding"]["linear_1"]["kernel"].shape == (2 * tiny.IMAGE_EMBED_DIM, 128)
    assert params["unet"]["conv_in"]["kernel"].dtype == jnp.bfloat16
    # The UNet refuses to run without the image conditioning.
    with pytest.raises(ValueError, match="image conditioning"):
        pipelines.unet_output(
            comps,
            params,
            jnp.zeros((1, 4, 8, 8)),
            jnp.array([1]),
            jnp.zeros((1, tiny.MAX_LENGTH, tiny.TEXT_HIDDEN)),
        )


def test_unclip_without_class_embedding_fails(root, unclip_dir):
    from flax import serialization

    # (a) weights without class_embedding
    bad = root / "unclip_no_class_weights"
    shutil.copytree(unclip_dir, bad)
    f = bad / "unet" / "diffusion_flax_model.msgpack"
    state = serialization.msgpack_restore(f.read_bytes())
    del state["class_embedding"]
    f.write_bytes(serialization.msgpack_serialize(state))
    with pytest.raises(loading.ModelLoadError, match="class_embedding weights are missing"):
        loading.load_sd(bad)
    # (b) StableUnCLIP model index but a UNet config without class_embed_type
    bad2 = root / "unclip_no_class_config"
    shutil.copytree(unclip_dir, bad2)
    cfg = json.loads((bad2 / "unet" / "config.json").read_text())
    del cfg["class_embed_type"]
    (bad2 / "unet" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(loading.ModelLoadError, match="without its image"):
        loading.load_sd(bad2)
    # (c) missing image encoder
    bad3 = root / "unclip_no_image_encoder"
    shutil.copytree(unclip_dir, bad3)
    shutil.rmtree(bad3 / "image_encoder")
    with pytest.raises(loading.ModelLoadError, match="image_encoder"):
        loading.load_sd(bad3)


@pytest.mark.slow
def test_class_embedding_is_added_to_the_time_embedding(unclip_dir):
    """apply_unet(c) equals the UNet with its time embedding replaced by emb + class_emb(c),
    computed independently by capturing the time embedding and the class embedding."""
    from augdiff.sd import unclip

    comps, params = loading.load_sd(unclip_dir)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 8, 8))
    ctx = jax.random.normal(jax.random.PRNGKey(1), (2, tiny.MAX_LENGTH, tiny.TEXT_HIDDEN))
    c = jax.random.normal(jax.random.PRNGKey(2), (2, 2 * tiny.IMAGE_EMBED_DIM))
    t = jnp.array([3, 700])
    apply = jax.jit(unclip.apply_unet, static_argnums=0)
    out = apply(comps, params, x, t, ctx, c)
    zero = apply(comps, params, x, t, ctx, jnp.zeros_like(c))
    assert float(jnp.max(jnp.abs(out - zero))) > 1e-3
    # Closed form of steps 1-3 with ε = 0 at level 0: ((e - μ)/σ · √ᾱ_0) σ + μ, then
    # [cos(0), sin(0)] = [1...1, 0...0].
    e = jax.random.normal(jax.random.PRNGKey(3), (2, tiny.IMAGE_EMBED_DIM))
    ce = unclip.noise_image_embeddings(comps, params, e, 0, jnp.zeros_like(e))
    half = tiny.IMAGE_EMBED_DIM // 2
    mu, sd = params["image_normalizer"]["mean"], params["image_normalizer"]["std"]
    abar0 = unclip.image_noising_alphas_cumprod(comps)[0]
    want = (e - mu) / sd * np.sqrt(abar0) * sd + mu
    np.testing.assert_allclose(ce[:, : tiny.IMAGE_EMBED_DIM], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        ce[:, tiny.IMAGE_EMBED_DIM : tiny.IMAGE_EMBED_DIM + half], 1.0, atol=1e-6
    )
    np.testing.assert_allclose(ce[:, tiny.IMAGE_EMBED_DIM + half :], 0.0, atol=1e-6)
