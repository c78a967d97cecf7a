"""Tiny random-weight Stable Diffusion models, saved exactly like real ones.

:func:`make_tiny_sd` builds diffusers' / transformers' own classes with tiny configs (UNet with
``block_out_channels=(32, 64)``, a two-block VAE, a two-layer CLIP text encoder, a tiny CLIP
vision tower for unCLIP), fills them with seeded random weights, writes a byte-level CLIP
tokenizer built locally (no hub) and saves everything with ``save_pretrained`` in a
diffusers-format folder, as Flax msgpack and/or PyTorch safetensors. Tests and the CPU smoke
configs then go through the real loading path (:func:`augdiff.sd.loading.load_sd`).

The weights are random: the folder says so in ``AUGDIFF_TINY_RANDOM_WEIGHTS.txt`` and in
``model_index.json`` (``"augdiff_tiny_random": true``), and loaders report
``info['tiny_random']`` so stores record ``model: tiny-random``.

The Flax parameters are drawn with numpy from the ``jax.eval_shape`` parameter tree (no model
is initialised eagerly, which takes ~30 s on 2 CPU cores). The PyTorch copy, when asked for,
needs torch and is made by mapping every PyTorch weight name to its Flax name with the same
rules the loader uses, so both formats hold bit-identical weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from augdiff import distributed
from augdiff.sd import loading

PIPELINE_CLASS = {
    "txt2img": "StableDiffusionPipeline",
    "ip2p": "StableDiffusionInstructPix2PixPipeline",
    "unclip": "StableUnCLIPImg2ImgPipeline",
}
TEXT_HIDDEN = 32
IMAGE_EMBED_DIM = 32
CLIP_IMAGE_SIZE = 32
MAX_LENGTH = 77

_SD_BETAS = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
)


def unet_config(kind: str) -> dict[str, Any]:
    """Tiny UNet: SD-1.x layout for txt2img/ip2p, SD-2.x (linear projections) for unCLIP."""
    cfg: dict[str, Any] = dict(
        sample_size=8,
        in_channels=8 if kind == "ip2p" else 4,
        out_channels=4,
        down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
        block_out_channels=[32, 64],
        layers_per_block=1,
        attention_head_dim=[2, 4],
        cross_attention_dim=TEXT_HIDDEN,
        norm_num_groups=32,
        use_linear_projection=kind == "unclip",
        flip_sin_to_cos=True,
        freq_shift=0,
    )
    if kind == "unclip":
        cfg.update(
            class_embed_type="projection",
            projection_class_embeddings_input_dim=2 * IMAGE_EMBED_DIM,
        )
    return cfg


def vae_config() -> dict[str, Any]:
    """Two-block VAE (spatial factor 2), 4 latent channels, SD's scaling factor."""
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        block_out_channels=[32, 64],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=16,
        scaling_factor=0.18215,
    )


def text_config(vocab_size: int) -> dict[str, Any]:
    return dict(
        vocab_size=vocab_size,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH,
        projection_dim=TEXT_HIDDEN,
        hidden_act="quick_gelu",
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def vision_config() -> dict[str, Any]:
    return dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=CLIP_IMAGE_SIZE,
        patch_size=8,
        projection_dim=IMAGE_EMBED_DIM,
        hidden_act="quick_gelu",
    )


def scheduler_configs(kind: str) -> dict[str, dict[str, Any]]:
    """Scheduler JSONs as the real checkpoints ship them (unCLIP: v-prediction + DDPM noiser)."""
    if kind == "ip2p":
        sched = dict(
            _class_name="EulerAncestralDiscreteScheduler",
            **_SD_BETAS,
            prediction_type="epsilon",
            steps_offset=1,
            timestep_spacing="leading",
        )
    else:
        sched = dict(
            _class_name="DDIMScheduler",
            **_SD_BETAS,
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
            timestep_spacing="leading",
            prediction_type="v_prediction" if kind == "unclip" else "epsilon",
        )
    out = {"scheduler": sched}
    if kind == "unclip":
        out["image_noising_scheduler"] = dict(
            _class_name="DDPMScheduler",
            num_train_timesteps=1000,
            beta_schedule="squaredcos_cap_v2",
            beta_start=0.0001,
            beta_end=0.02,
            clip_sample=True,
            prediction_type="epsilon",
        )
    return out


def write_tokenizer(folder: str) -> int:
    """A byte-level CLIP tokenizer (every byte, with and without ``</w>``; no merges).

    Returns the vocabulary size.
    """
    from transformers import CLIPTokenizer
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    os.makedirs(folder, exist_ok=True)
    vocab_file, merges_file = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
    with open(vocab_file, "w") as f:
        json.dump({t: i for i, t in enumerate(tokens)}, f)
    with open(merges_file, "w") as f:
        f.write("#version: 0.2\n")
    tok = CLIPTokenizer(
        vocab_file, merges_file, model_max_length=MAX_LENGTH, pad_token="<|endoftext|>"
    )
    tok.save_pretrained(folder)
    return len(tokens)


def random_params(abstract: Any, rng: np.random.Generator, scale: float = 1.0) -> dict:
    """Seeded random weights for a parameter tree.

    Kernels ~ N(0, scale^2 / fan_in) (fan_in = every axis but the last), biases ~ N(0, 0.02^2),
    norm scales ~ 1 + N(0, 0.02^2), embeddings ~ N(0, 0.02^2); leaves are visited in sorted
    key order, so the draw depends on the seed only.
    """
    flat = flatten_dict(abstract)
    out = {}
    for key in sorted(flat):
        shape = tuple(flat[key].shape)
        name = key[-1]
        if name == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            v = rng.standard_normal(shape) * scale / np.sqrt(fan_in)
        elif name == "scale":
            v = 1.0 + 0.02 * rng.standard_normal(shape)
        else:
            v = 0.02 * rng.standard_normal(shape)
        out[key] = v.astype(np.float32)
    return unflatten_dict(out)


def _export_pt(
    pt_model: Any, flax_params: dict, library: str, abstract: Any, component: str
) -> None:
    """Fill a torch model from Flax params through the loader's name mapping (strict)."""
    import torch

    abstract_flat = flatten_dict(abstract)
    flat = flatten_dict(flax_params)
    state = {}
    used = set()
    for pt_key, t in pt_model.state_dict().items():
        if pt_key.endswith(("position_ids",)):
            state[pt_key] = t
            continue
        key, layout = loading.pt_to_flax_key(pt_key, tuple(t.shape), abstract_flat, library)
        if key not in flat:
            raise loading.ModelLoadError(f"component {component!r}: no Flax weight for {pt_key}")
        state[pt_key] = torch.from_numpy(
            np.ascontiguousarray(loading.flax_to_pt_array(flat[key], layout))
        )
        used.add(key)
    if used != set(flat):
        raise loading.ModelLoadError(
            f"component {component!r}: Flax weights without a PyTorch home: "
            f"{sorted(set(flat) - used)[:5]}"
        )
    pt_model.load_state_dict(state, strict=True)


def make_tiny_sd(
    path: str | os.PathLike,
    kind: str = "txt2img",
    seed: int = 0,
    formats: Sequence[str] = ("flax", "pytorch"),
) -> str:
    """Write a tiny random-weight SD model of ``kind`` to ``path`` and return the path.

    Args:
      path: output directory (created).
      kind: ``'txt2img'`` (also used for img2img), ``'ip2p'`` (8-channel UNet) or ``'unclip'``
        (SD-2.x UNet with the ``projection`` class embedding, CLIP vision tower with projection,
        image normaliser and DDPM image-noising scheduler).
      seed: the same seed gives the same weights, whatever ``formats``.
      formats: any of ``'flax'`` (msgpack) and ``'pytorch'`` (safetensors; needs torch).
    """
    import jax.numpy as jnp
    from diffusers import FlaxAutoencoderKL, FlaxUNet2DConditionModel
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPVisionConfig,
        FlaxCLIPTextModel,
        FlaxCLIPVisionModel,
    )

    if kind not in loading.KINDS:
        raise ValueError(f"kind must be one of {loading.KINDS}, got {kind!r}")
    formats = tuple(formats)
    bad = set(formats) - {"flax", "pytorch"}
    if bad or not formats:
        raise ValueError(
            f"formats must be a non-empty subset of ('flax', 'pytorch'), got {formats}"
        )
    if "pytorch" in formats:
        try:
            import torch  # noqa: F401
        except ImportError as e:
            raise ImportError(
                "make_tiny_sd(formats=('pytorch',)) needs torch (the 'torch' extra)"
            ) from e
    root = os.fspath(path)
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(seed)
    vocab_size = write_tokenizer(os.path.join(root, "tokenizer"))

    # ---- diffusers models
    ucfg, vcfg = unet_config(kind), vae_config()
    unet = FlaxUNet2DConditionModel.from_config(ucfg, dtype=jnp.float32)
    vae = FlaxAutoencoderKL.from_config(vcfg, dtype=jnp.float32)
    unet_abs = dict(loading.unet_abstract(unet))
    if kind == "unclip":
        unet_abs["class_embedding"] = loading.class_embedding_abstract(
            2 * IMAGE_EMBED_DIM, 4 * ucfg["block_out_channels"][0]
        )
    vae_abs = loading.vae_abstract(vae)
    diff_models = {
        "unet": (unet, unet_abs, random_params(unet_abs, rng), ucfg, "UNet2DConditionModel"),
        "vae": (vae, vae_abs, random_params(vae_abs, rng), vcfg, "AutoencoderKL"),
    }
    # ---- transformers models
    tcfg = CLIPTextConfig(**text_config(vocab_size))
    text = FlaxCLIPTextModel(tcfg, _do_init=False)
    text_abs = loading.text_encoder_abstract(text)
    tf_models = {
        "text_encoder": (text, text_abs, random_params(text_abs, rng), tcfg, "CLIPTextModel")
    }
    if kind == "unclip":
        vis_cfg = CLIPVisionConfig(**vision_config())
        vis = FlaxCLIPVisionModel(vis_cfg, _do_init=False)
        vis_abs = loading.image_encoder_abstract(vis)
        tf_models["image_encoder"] = (
            vis,
            vis_abs,
            random_params(vis_abs, rng),
            vis_cfg,
            "CLIPVisionModelWithProjection",
        )
        normalizer = {
            "mean": (0.1 * rng.standard_normal((1, IMAGE_EMBED_DIM))).astype(np.float32),
            "std": (1.0 + 0.2 * rng.random((1, IMAGE_EMBED_DIM))).astype(np.float32),
        }

    if "pytorch" in formats:
        import diffusers
        import transformers

        for name, (_, abstract, params, cfg, cls_name) in diff_models.items():
            pt_model = getattr(diffusers, cls_name)(**cfg)
            _export_pt(pt_model, params, "diffusers", abstract, name)
            pt_model.save_pretrained(os.path.join(root, name), safe_serialization=True)
        for name, (_, abstract, params, cfg, cls_name) in tf_models.items():
            pt_model = getattr(transformers, cls_name)(cfg)
            _export_pt(pt_model, params, "transformers", abstract, name)
            pt_model.save_pretrained(os.path.join(root, name), safe_serialization=True)
    if "flax" in formats:
        for name, (model, _, params, _, _) in diff_models.items():
            model.save_pretrained(os.path.join(root, name), params=params)
        for name, (model, _, params, _, _) in tf_models.items():
            model.save_pretrained(os.path.join(root, name), params=params)
    # One config.json per diffusers model, complete (Flax's save_pretrained drops keys its class
    # lacks, e.g. class_embed_type) and readable by both the Flax and the PyTorch class.
    for name, (_, _, _, cfg, cls_name) in diff_models.items():
        with open(os.path.join(root, name, "config.json"), "w") as f:
            json.dump({"_class_name": cls_name, "_diffusers_version": "0.39.0", **cfg}, f, indent=2)

    if kind == "unclip":
        from safetensors.numpy import save_file

        os.makedirs(os.path.join(root, "image_normalizer"), exist_ok=True)
        save_file(
            normalizer,
            os.path.join(root, "image_normalizer", "diffusion_pytorch_model.safetensors"),
        )
        with open(os.path.join(root, "image_normalizer", "config.json"), "w") as f:
            json.dump(
                {"_class_name": "StableUnCLIPImageNormalizer", "embedding_dim": IMAGE_EMBED_DIM}, f
            )
        CLIPImageProcessor(
            size={"shortest_edge": CLIP_IMAGE_SIZE},
            crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
        ).save_pretrained(os.path.join(root, "feature_extractor"))
    for name, cfg in scheduler_configs(kind).items():
        os.makedirs(os.path.join(root, name), exist_ok=True)
        with open(os.path.join(root, name, "scheduler_config.json"), "w") as f:
            json.dump({**cfg, "_diffusers_version": "0.39.0"}, f, indent=2)

    index: dict[str, Any] = {
        "_class_name": PIPELINE_CLASS[kind],
        "_diffusers_version": "0.39.0",
        "augdiff_tiny_random": True,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", scheduler_configs(kind)["scheduler"]["_class_name"]],
    }
    if kind == "unclip":
        index.update(
            feature_extractor=["transformers", "CLIPImageProcessor"],
            image_encoder=["transformers", "CLIPVisionModelWithProjection"],
            image_normalizer=["stable_diffusion", "StableUnCLIPImageNormalizer"],
            image_noising_scheduler=["diffusers", "DDPMScheduler"],
        )
    else:
        index.update(
            safety_checker=[None, None],
            feature_extractor=[None, None],
            requires_safety_checker=False,
        )
    with open(os.path.join(root, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)
    with open(os.path.join(root, loading.TINY_MARKER), "w") as f:
        f.write(
            f"augdiff tiny Stable Diffusion ({kind}) with RANDOM weights (seed {seed}), made by "
            "augdiff.sd.tiny.make_tiny_sd for tests and CPU smoke runs. Not a trained model.\n"
        )
    return root


def make_tiny_clip(path: str | os.PathLike, seed: int = 0) -> str:
    """A tiny random-weight ``FlaxCLIPModel`` (the tiny SD text/vision configs: 32-d, 4×4 patch
    grid at 32²) with a local byte-level tokenizer, saved with ``save_pretrained``."""
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig, FlaxCLIPModel

    root = os.fspath(path)
    vocab = write_tokenizer(root)
    cfg = CLIPConfig.from_text_vision_configs(
        CLIPTextConfig(**text_config(vocab)),
        CLIPVisionConfig(**vision_config()),
        projection_dim=IMAGE_EMBED_DIM,
    )
    model = FlaxCLIPModel(cfg, _do_init=False)
    params = random_params(loading.text_encoder_abstract(model), np.random.default_rng(seed))
    model.save_pretrained(root, params=params)
    with open(os.path.join(root, loading.TINY_MARKER), "w") as f:
        f.write(f"augdiff tiny CLIP with RANDOM weights (seed {seed}); not a trained model.\n")
    return root


def path_or_tiny(path: str, *, tiny: bool, tiny_dir: str, marker: str,
                 make: Callable[[str], Any], missing: str) -> str:
    """The one home of "weights from a path, or a tiny random model": ``path`` when given;
    else (``tiny`` set) ``tiny_dir``, where process 0 first makes the tiny model with
    ``make(tiny_dir)`` unless ``tiny_dir/marker`` exists, every process then meeting at a
    barrier (so the others load what process 0 wrote). Without a path or ``tiny`` a
    ``ValueError(missing)``."""
    if path:
        return path
    if not tiny:
        raise ValueError(missing)
    if jax.process_index() == 0 and not os.path.isfile(os.path.join(tiny_dir, marker)):
        make(tiny_dir)
    distributed.barrier(f"augdiff tiny model {tiny_dir}")
    return tiny_dir


def load_or_make_tiny(path: str, *, kind: str, dtype: Any, tiny: bool, tiny_dir: str,
                      seed: int, missing: str, variant: str = "",
                      config: str = "") -> tuple[loading.SDComponents, dict]:
    """``(components, params)`` of the Stable Diffusion model of ``kind`` at ``path``
    (:func:`augdiff.sd.loading.load_sd`, with its ``variant`` and single-file ``config``; empty
    means none), or with an empty path and ``tiny`` the tiny random-weight one of
    :func:`make_tiny_sd` in ``tiny_dir`` (:func:`path_or_tiny`)."""
    root = path_or_tiny(
        path, tiny=tiny, tiny_dir=tiny_dir, marker="model_index.json", missing=missing,
        make=lambda d: make_tiny_sd(d, kind=kind, seed=int(seed), formats=("flax",)))
    return loading.load_sd(root, dtype=dtype, kind=kind, variant=variant or None,
                           config=config or None)


def load_from_config(model_cfg: Any, workdir: str, seed: int,
                     kind: str) -> tuple[loading.SDComponents, dict]:
    """:func:`load_or_make_tiny` of a method config's ``model`` block: ``path`` (folder / hub
    id / single-file checkpoint), ``tiny`` (empty path: the tiny model in
    ``<workdir>/tiny_<kind>``), ``dtype``, and optional ``variant`` (e.g. ``'fp16'``) and
    ``config`` (a single file's diffusers-format config folder)."""
    return load_or_make_tiny(
        model_cfg.path, kind=kind, dtype=model_cfg.dtype, tiny=bool(model_cfg.tiny),
        variant=str(model_cfg.get("variant", "") or ""),
        config=str(model_cfg.get("config", "") or ""),
        tiny_dir=os.path.join(workdir, f"tiny_{kind}"), seed=int(seed),
        missing="config.model.path is empty: give a model folder/hub id or tiny=True")
