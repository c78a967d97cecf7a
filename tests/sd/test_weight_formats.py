"""Must-show 3 of the weights issue: a tiny random SD saved as PyTorch ``.bin`` pickles, as an
``fp16`` variant and as a single-file checkpoint in the original LDM layout loads into augdiff
and samples the images of the safetensors folder; a missing or wrong file fails in under 2 s.

References are independent of augdiff: the ``.bin`` and variant folders are written by
diffusers' / transformers' own ``save_pretrained``; the single file is written with the
diffusers -> LDM key mapping of the original conversion script, restated below, and diffusers'
own ``from_single_file`` is the reference loader (its torch models' outputs are compared to
augdiff's converted Flax models on one input).
"""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import shutil
import sys
import time
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from augdiff.sd import loading, pipelines, tiny

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.torch

SAMPLE = dict(guidance_scale=2.0, num_steps=2, sampler="ddim")
PROMPTS = ["a cat", "a red ship"]


# ------------------------------------------------------------------ the LDM layout, restated


def diffusers_to_ldm_unet(sd: dict, cfg: dict) -> dict:
    """diffusers UNet state dict -> ``model.diffusion_model.*`` (the conversion script's
    ``unet_conversion_map*`` tables, for any number of levels / layers per block)."""
    levels, lpb = len(cfg["block_out_channels"]), cfg["layers_per_block"]
    top = {
        "time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
        "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
    }
    layer = []  # (hf prefix, sd prefix)
    for i in range(levels):
        for j in range(lpb):
            layer.append((f"down_blocks.{i}.resnets.{j}.",
                          f"input_blocks.{(lpb + 1) * i + j + 1}.0."))
            layer.append((f"down_blocks.{i}.attentions.{j}.",
                          f"input_blocks.{(lpb + 1) * i + j + 1}.1."))
        for j in range(lpb + 1):
            layer.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{(lpb + 1) * i + j}.0."))
            layer.append((f"up_blocks.{i}.attentions.{j}.",
                          f"output_blocks.{(lpb + 1) * i + j}.1."))
        if i < levels - 1:
            layer.append((f"down_blocks.{i}.downsamplers.0.conv.",
                          f"input_blocks.{(lpb + 1) * (i + 1)}.0.op."))
            has_attn = any(k.startswith(f"up_blocks.{i}.attentions.") for k in sd)
            layer.append((f"up_blocks.{i}.upsamplers.0.",
                          f"output_blocks.{(lpb + 1) * i + lpb}.{2 if has_attn else 1}."))
    layer += [("mid_block.attentions.0.", "middle_block.1."),
              ("mid_block.resnets.0.", "middle_block.0."),
              ("mid_block.resnets.1.", "middle_block.2.")]
    resnet = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
              ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"),
              ("conv_shortcut", "skip_connection")]
    out = {}
    for k, v in sd.items():
        new = k
        for hf, ldm in top.items():
            if k.startswith(hf):
                new = ldm + k[len(hf):]
        if "resnets" in new:
            for hf, ldm in resnet:
                new = new.replace(hf, ldm)
        for hf, ldm in layer:
            if new.startswith(hf):
                new = ldm + new[len(hf):]
        assert new != k, f"no LDM name for {k}"
        out["model.diffusion_model." + new] = v
    return out


def diffusers_to_ldm_vae(sd: dict, cfg: dict) -> dict:
    """diffusers VAE -> ``first_stage_model.*`` (``vae_conversion_map*``; attention
    projections back to 1x1 convolutions)."""
    levels, lpb = len(cfg["block_out_channels"]), cfg["layers_per_block"]
    table = [("conv_shortcut", "nin_shortcut"), ("conv_norm_out", "norm_out"),
             ("mid_block.attentions.0.", "mid.attn_1.")]
    for i in range(levels):
        for j in range(lpb):
            table.append((f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}."))
        if i < levels - 1:
            table.append((f"down_blocks.{i}.downsamplers.0.", f"down.{i}.downsample."))
            table.append((f"up_blocks.{i}.upsamplers.0.", f"up.{levels - 1 - i}.upsample."))
        for j in range(lpb + 1):
            table.append((f"decoder.up_blocks.{i}.resnets.{j}.",
                          f"decoder.up.{levels - 1 - i}.block.{j}."))
    for i in range(2):
        table.append((f"mid_block.resnets.{i}.", f"mid.block_{i + 1}."))
    attn = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
            ("to_out.0.", "proj_out.")]
    out = {}
    for k, v in sd.items():
        new = k
        for hf, ldm in table:
            new = new.replace(hf, ldm)
        if "attn_1" in new:
            for hf, ldm in attn:
                new = new.replace(hf, ldm)
            if new.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight")):
                v = v.reshape(*v.shape, 1, 1)
        out["first_stage_model." + new] = v
    return out


def to_single_file(models: dict) -> dict:
    unet, vae, text = models["unet"], models["vae"], models["text_encoder"]
    state = diffusers_to_ldm_unet(unet.state_dict(), dict(unet.config))
    state |= diffusers_to_ldm_vae(vae.state_dict(), dict(vae.config))
    state |= {"cond_stage_model.transformer." + k: v for k, v in text.state_dict().items()}
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


# ------------------------------------------------------------------------------ fixtures


def torch_models(folder) -> dict:
    return {
        "unet": diffusers.UNet2DConditionModel.from_pretrained(os.path.join(folder, "unet")),
        "vae": diffusers.AutoencoderKL.from_pretrained(os.path.join(folder, "vae")),
        "text_encoder": transformers.CLIPTextModel.from_pretrained(
            os.path.join(folder, "text_encoder")),
    }


def save_models(models: dict, folder, **kw) -> None:
    for name, m in models.items():
        m.save_pretrained(os.path.join(folder, name), **kw)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("formats")


@pytest.fixture(scope="module")
def st_dir(root):
    return tiny.make_tiny_sd(root / "st", kind="txt2img", seed=3, formats=("pytorch",))


@pytest.fixture(scope="module")
def models(st_dir):
    return torch_models(st_dir)


@pytest.fixture(scope="module")
def bin_dir(root, st_dir, models):
    d = root / "bin"
    shutil.copytree(st_dir, d, ignore=shutil.ignore_patterns("*.safetensors"))
    save_models(models, d, safe_serialization=False)
    return str(d)


@pytest.fixture(scope="module")
def fp16_dir(root, st_dir, models):
    """Default files hold *other* weights (seed 4); only the fp16 variant is seed 3's."""
    other = tiny.make_tiny_sd(root / "other", kind="txt2img", seed=4, formats=("pytorch",))
    d = root / "fp16"
    shutil.copytree(other, d)
    save_models({k: m.half() for k, m in torch_models(st_dir).items()}, d, variant="fp16")
    return str(d)


@pytest.fixture(scope="module")
def single_files(root, models):
    from safetensors.torch import save_file

    state = to_single_file(models)
    st = str(root / "sd-tiny.safetensors")
    save_file(state, st)
    ckpt = str(root / "sd-tiny.ckpt")
    # What a Lightning checkpoint carries beside the weights.
    torch.save({"state_dict": state, "global_step": 7, "epoch": 1}, ckpt)
    return st, ckpt


@pytest.fixture(scope="module")
def reference_images(st_dir):
    comps, params = loading.load_sd(st_dir)
    return pipelines.text2img(comps, params, PROMPTS, jax.random.PRNGKey(0), **SAMPLE)


def images(path, **kw):
    comps, params = loading.load_sd(path, **kw)
    return comps, params, pipelines.text2img(comps, params, PROMPTS, jax.random.PRNGKey(0),
                                             **SAMPLE)


def report(name, diff):
    print(f"\n[weights] {name}: max |image - safetensors image| = {diff:.3g}", file=sys.stderr)


# --------------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_bin_folder_gives_the_safetensors_images(bin_dir, reference_images):
    assert os.path.isfile(os.path.join(bin_dir, "unet", "diffusion_pytorch_model.bin"))
    assert os.path.isfile(os.path.join(bin_dir, "text_encoder", "pytorch_model.bin"))
    assert not any(f.endswith(".safetensors") for _, _, fs in os.walk(bin_dir) for f in fs)
    comps, _, out = images(bin_dir)
    assert comps.info["weights_format"] == "pytorch-bin"
    assert [p.name for p in loading.weight_files(bin_dir)] == [
        "diffusion_pytorch_model.bin", "diffusion_pytorch_model.bin", "pytorch_model.bin"]
    diff = float(np.max(np.abs(out - reference_images)))
    report(".bin folder", diff)
    assert diff == 0.0


def test_bin_is_read_without_torch_and_with_weights_only(bin_dir, st_dir, monkeypatch):
    """Without torch the restricted unpickler gives the safetensors tensors bit for bit; with
    torch, ``torch.load`` is called with ``weights_only=True``."""
    from safetensors.numpy import load_file

    want = load_file(os.path.join(st_dir, "unet", "diffusion_pytorch_model.safetensors"))
    seen = {}
    real_load = torch.load

    def spy(*a, **k):
        seen.update(k)
        return real_load(*a, **k)

    monkeypatch.setattr(torch, "load", spy)
    with_torch = loading.load_torch_pickle(os.path.join(bin_dir, "unet",
                                                        "diffusion_pytorch_model.bin"))
    assert seen.get("weights_only") is True
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
    without = loading.load_torch_pickle(os.path.join(bin_dir, "unet",
                                                     "diffusion_pytorch_model.bin"))
    for got in (with_torch, without):
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    # other dtypes, views with an offset and strides, a Lightning wrapper, without torch
    monkeypatch.undo()
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = {"h": base.half(), "b": base.bfloat16() / 7, "i": base.long(),
             "view": base[1:, ::2].t(), "flag": torch.tensor([True, False])}
    path = os.path.join(os.path.dirname(bin_dir), "dtypes.ckpt")
    torch.save({"state_dict": state, "epoch": 3}, path)
    monkeypatch.setitem(sys.modules, "torch", None)
    got = loading.load_torch_pickle(path)
    monkeypatch.undo()
    assert got.keys() == state.keys()
    for k, v in state.items():
        np.testing.assert_array_equal(got[k], v.float().numpy() if k == "b" else v.numpy(),
                                      err_msg=k)


class Boom:
    """Pickled by reference: unpickling it calls ``os.system`` if anything lets it through."""

    def __reduce__(self):
        return (os.system, ("echo pwned > PWNED_MARKER",))


@pytest.mark.parametrize("with_torch", [True, False])
def test_malicious_bin_is_refused_without_running_it(tmp_path, monkeypatch, with_torch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "diffusion_pytorch_model.bin"
    state = {"evil": Boom()}
    # torch's own zip container, with a pickle that calls os.system on load
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps(state, protocol=2))
        zf.writestr("archive/byteorder", "little")
    if not with_torch:
        monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(loading.ModelLoadError) as e:
        loading.load_torch_pickle(str(path))
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    assert not (tmp_path / "PWNED_MARKER").exists()


@pytest.mark.slow
def test_fp16_variant_gives_the_safetensors_images(fp16_dir, reference_images):
    comps, params, out = images(fp16_dir, variant="fp16")
    assert comps.info["variant"] == "fp16"
    assert all(".fp16." in p.name for p in loading.weight_files(fp16_dir, "fp16"))
    # cast to the model dtype
    assert params["unet"]["conv_in"]["kernel"].dtype == jnp.float32
    diff = float(np.max(np.abs(out - reference_images)))
    report("fp16 variant", diff)
    assert diff < 2e-2
    # the default files (other weights) would give other images
    _, _, default = images(fp16_dir)
    assert float(np.max(np.abs(default - reference_images))) > 0.1
    # a variant that is not there is an error naming it, never a fall-back
    with pytest.raises(loading.ModelLoadError, match="no 'ema' variant"):
        loading.load_sd(fp16_dir, variant="ema")


@pytest.mark.slow
def test_single_file_matches_diffusers_from_single_file(single_files, st_dir, models):
    """diffusers' ``from_single_file`` reads the written file back to the original models (so
    the restated mapping is right); augdiff's conversion of it gives diffusers' outputs."""
    st_file, _ = single_files
    pipe = diffusers.StableDiffusionPipeline.from_single_file(
        st_file, config=st_dir, local_files_only=True, safety_checker=None)
    for name in ("unet", "vae", "text_encoder"):
        ref, got = models[name].state_dict(), getattr(pipe, name).state_dict()
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0, msg=k)
    comps, params = loading.load_sd(st_file, config=st_dir)
    assert comps.info["weights_format"] == "single-file" and not comps.info["tiny_random"]
    assert loading.weight_files(st_file, config=st_dir) == [pathlib.Path(st_file)]

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    ctx = rng.standard_normal((1, tiny.MAX_LENGTH, tiny.TEXT_HIDDEN)).astype(np.float32)
    t = np.array([500])
    with torch.no_grad():
        want = pipe.unet(torch.from_numpy(x), torch.from_numpy(t),
                         torch.from_numpy(ctx)).sample.numpy()
        z = torch.from_numpy(x)
        want_dec = pipe.vae.decode(z).sample.numpy()
        ids = torch.tensor([[0, 5, 9, 3, 1] + [1] * (tiny.MAX_LENGTH - 5)])
        want_txt = pipe.text_encoder(ids).last_hidden_state.numpy()
    got = comps.unet.apply({"params": params["unet"]}, x, jnp.asarray(t), ctx).sample
    got_dec = comps.vae.apply({"params": params["vae"]}, x, method=comps.vae.decode).sample
    jids = jnp.asarray(ids.numpy())
    got_txt = comps.text_encoder.apply(
        {"params": params["text_encoder"]}, jids, jnp.ones_like(jids),
        jnp.broadcast_to(jnp.arange(jids.shape[-1]), jids.shape), deterministic=True)[0]
    for name, a, b in (("unet", got, want), ("vae", got_dec, want_dec),
                       ("text_encoder", got_txt, want_txt)):
        d = float(np.max(np.abs(np.asarray(a) - b)))
        print(f"\n[weights] single-file {name} vs diffusers from_single_file: {d:.3g} "
              f"(outputs up to {float(np.max(np.abs(b))):.3g})", file=sys.stderr)
        # float32 torch vs XLA kernels on CPU: ~1e-4 of the output scale; any wrong weight
        # moves the outputs by their own order of magnitude.
        assert d < 1e-3 * max(1.0, float(np.max(np.abs(b)))), name


@pytest.mark.slow
@pytest.mark.parametrize("which", ["safetensors", "ckpt"])
def test_single_file_gives_the_safetensors_images(single_files, st_dir, reference_images,
                                                  which):
    path = single_files[0 if which == "safetensors" else 1]
    _, _, out = images(path, config=st_dir)
    diff = float(np.max(np.abs(out - reference_images)))
    report(f"single-file .{which}", diff)
    assert diff < 1e-5


@pytest.mark.slow
def test_single_file_ema_variant(root, models, st_dir, reference_images):
    """``variant='ema'`` reads the ``model_ema.*`` copy of the UNet, whatever the live one."""
    from safetensors.torch import save_file

    state = to_single_file(models)
    ema = {"model_ema." + "".join(k.split(".")[1:]): v.clone()
           for k, v in state.items() if k.startswith("model.diffusion_model.")}
    state = {k: (torch.randn_like(v) if k.startswith("model.diffusion_model.") else v)
             for k, v in state.items()} | ema
    path = str(root / "ema.safetensors")
    save_file(state, path)
    _, _, out = images(path, config=st_dir, variant="ema")
    assert float(np.max(np.abs(out - reference_images))) < 1e-5
    with pytest.raises(loading.ModelLoadError, match="variant 'fp16' has no meaning"):
        loading.load_sd(path, config=st_dir, variant="fp16")


def test_single_file_checks(root, single_files, st_dir):
    st_file, _ = single_files
    with pytest.raises(loading.ModelLoadError, match="give config="):
        loading.load_sd(st_file)
    not_sd = root / "not_sd.safetensors"
    from safetensors.numpy import save_file

    save_file({"a.weight": np.zeros(2, np.float32)}, str(not_sd))
    with pytest.raises(loading.ModelLoadError, match="not a Stable Diffusion single-file"):
        loading.load_sd(not_sd, config=st_dir)
    broken = root / "broken.ckpt"
    broken.write_bytes(b"\x80\x02not a zip")
    with pytest.raises(loading.ModelLoadError, match="not a PyTorch zip"):
        loading.load_sd(broken, config=st_dir)
    # a key the config's model has no place for
    from safetensors.torch import load_file
    from safetensors.torch import save_file as save_t

    state = load_file(st_file)
    state["model.diffusion_model.input_blocks.9.0.in_layers.0.weight"] = torch.zeros(3)
    extra = root / "extra.safetensors"
    save_t(state, str(extra))
    with pytest.raises(loading.ModelLoadError, match="'unet'.*no place"):
        loading.load_sd(extra, config=st_dir)


def test_wrong_paths_fail_fast_before_any_model(root, st_dir, bin_dir, monkeypatch):
    """A missing path, file, variant or config fails in well under 2 s, before diffusers'
    model classes are touched."""
    import diffusers as d

    def no_models(*a, **k):
        raise AssertionError("a model was built before the file checks")

    monkeypatch.setattr(d.FlaxUNet2DConditionModel, "from_config", no_models)
    no_vae = root / "no_vae_weights"
    if not no_vae.exists():
        shutil.copytree(st_dir, no_vae)
        os.remove(no_vae / "vae" / "diffusion_pytorch_model.safetensors")
    cases = [
        ((str(root / "no-such-dir"),), {}, "neither a local directory"),
        ((no_vae,), {}, "'vae': no weights"),
        ((bin_dir,), {"variant": "fp16"}, "no 'fp16' variant"),
        ((root / "no-such.safetensors",), {}, "neither a local directory"),
        ((os.path.join(st_dir, "model_index.json"),), {}, "is a file but not a checkpoint"),
        ((st_dir,), {"variant": "../x"}, "variant must be"),
    ]
    for args, kw, msg in cases:
        t0 = time.perf_counter()
        with pytest.raises(loading.ModelLoadError, match=msg) as e:
            loading.load_sd(*args, **kw)
        dt = time.perf_counter() - t0
        print(f"\n[weights] {msg!r}: {dt * 1000:.0f} ms", file=sys.stderr)
        assert dt < 2.0 and "\n" not in str(e.value)


def test_sharded_fp16_variant(root, st_dir):
    """A sharded variant (``*.safetensors.index.fp16.json`` + shards) is found and listed."""
    d = root / "sharded"
    shutil.copytree(st_dir, d)
    fresh = {k: m.half() for k, m in torch_models(st_dir).items()}
    save_models(fresh, d, variant="fp16", max_shard_size="20KB")
    files = [p.name for p in loading.weight_files(d, "fp16", weights="pytorch")
             if p.parent.name == "unet"]
    assert files[0] == "diffusion_pytorch_model.safetensors.index.fp16.json" and len(files) > 2
    index = json.loads((d / "unet" / files[0]).read_text())
    assert set(files[1:]) == set(index["weight_map"].values())


def test_sd2_open_clip_text_encoder_matches_diffusers_conversion():
    """SD-2.x's OpenCLIP text tower (fused q/k/v ``in_proj``) renamed as diffusers'
    ``convert_open_clip_checkpoint`` does; the last block is dropped (SD-2 conditions on the
    penultimate layer, ``num_hidden_layers`` one less than the checkpoint's blocks)."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    rng = np.random.default_rng(1)
    h, blocks = 32, 3
    ckpt = {"positional_embedding": (77, h), "token_embedding.weight": (99, h),
            "ln_final.weight": (h,), "ln_final.bias": (h,), "text_projection": (h, h)}
    for i in range(blocks):
        p = f"transformer.resblocks.{i}."
        ckpt |= {p + "attn.in_proj_weight": (3 * h, h), p + "attn.in_proj_bias": (3 * h,),
                 p + "attn.out_proj.weight": (h, h), p + "attn.out_proj.bias": (h,),
                 p + "ln_1.weight": (h,), p + "ln_1.bias": (h,), p + "ln_2.weight": (h,),
                 p + "ln_2.bias": (h,), p + "mlp.c_fc.weight": (37, h), p + "mlp.c_fc.bias": (37,),
                 p + "mlp.c_proj.weight": (h, 37), p + "mlp.c_proj.bias": (h,)}
    ckpt = {"model." + k: rng.standard_normal(s).astype(np.float32) for k, s in ckpt.items()}
    text_model = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        hidden_size=h, intermediate_size=37, num_hidden_layers=blocks - 1,
        num_attention_heads=4, vocab_size=99))
    want = convert_open_clip_checkpoint(
        text_model, {"cond_stage_model." + k: torch.from_numpy(v) for k, v in ckpt.items()})
    want = {k: v.numpy() for k, v in want.items() if f"layers.{blocks - 1}." not in k}
    got = loading.ldm_to_diffusers(ckpt, "text_encoder", {"num_hidden_layers": blocks - 1})
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
