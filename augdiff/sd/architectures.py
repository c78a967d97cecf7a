"""The published architectures of the Stable Diffusion models the seeds use, as abstract models.

The configurations are those of the public ``config.json`` files (no weights): enough to build
every module and its parameter tree as ``jax.ShapeDtypeStruct`` with ``jax.eval_shape``, so that
a program can be compiled at its real size on a machine that has no weights
(``augdiff compile``). :func:`abstract_sd` returns the same ``(SDComponents, params)`` pair as
:func:`augdiff.sd.loading.load_sd`, with abstract parameters.

=========================  ===========================================================
architecture               model (hub id of the public configuration)
=========================  ===========================================================
``sd15``                   SD-1.4 / SD-1.5 (CompVis/stable-diffusion-v1-4, runwayml/...):
                           UNet 320/640/1280/1280, 8 heads, cross-attention 768 (860 M),
                           VAE 128/256/512/512, CLIP ViT-L/14 text encoder
``ip2p``                   InstructPix2Pix (timbrooks/instruct-pix2pix): SD-1.5 with an
                           8-channel UNet input
``sd21-unclip``            stabilityai/stable-diffusion-2-1-unclip: UNet with 64-wide heads
                           5/10/20/20, linear projections, cross-attention 1024 and a
                           ``projection`` class embedding of 2 × 1024; OpenCLIP ViT-H text and
                           CLIP ViT-H/14 image encoders; v-prediction
=========================  ===========================================================
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp

from augdiff.sd import loading, tiny

SD15_UNET: dict[str, Any] = dict(
    sample_size=64, in_channels=4, out_channels=4,
    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    block_out_channels=[320, 640, 1280, 1280], layers_per_block=2, attention_head_dim=8,
    cross_attention_dim=768, norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0,
)
SD21_UNCLIP_UNET: dict[str, Any] = dict(
    SD15_UNET, sample_size=96, attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024,
    use_linear_projection=True, class_embed_type="projection",
    projection_class_embeddings_input_dim=2048,
)
IP2P_UNET: dict[str, Any] = dict(SD15_UNET, in_channels=8)
SD15_VAE: dict[str, Any] = dict(
    in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512],
    layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=512,
    scaling_factor=0.18215,
)
CLIP_L14_TEXT: dict[str, Any] = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=77, projection_dim=768,
    hidden_act="quick_gelu",
)
OPENCLIP_H_TEXT: dict[str, Any] = dict(
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
    num_attention_heads=16, max_position_embeddings=77, projection_dim=512, hidden_act="gelu",
)
CLIP_H14_VISION: dict[str, Any] = dict(
    hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
    image_size=224, patch_size=14, projection_dim=1024, hidden_act="gelu",
)
SD_SCHEDULER: dict[str, Any] = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    prediction_type="epsilon", set_alpha_to_one=False, steps_offset=1, clip_sample=False,
)
UNCLIP_SCHEDULER: dict[str, Any] = dict(SD_SCHEDULER, prediction_type="v_prediction")
UNCLIP_NOISING: dict[str, Any] = dict(
    num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon",
    clip_sample=False,
)

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "sd15": dict(kind="txt2img", unet=SD15_UNET, vae=SD15_VAE, text=CLIP_L14_TEXT,
                 scheduler=SD_SCHEDULER),
    "ip2p": dict(kind="ip2p", unet=IP2P_UNET, vae=SD15_VAE, text=CLIP_L14_TEXT,
                 scheduler=SD_SCHEDULER),
    "sd21-unclip": dict(kind="unclip", unet=SD21_UNCLIP_UNET, vae=SD15_VAE,
                        text=OPENCLIP_H_TEXT, vision=CLIP_H14_VISION,
                        scheduler=UNCLIP_SCHEDULER, noising=UNCLIP_NOISING),
}
HUB_IDS: dict[str, str] = {
    "CompVis/stable-diffusion-v1-4": "sd15",
    "runwayml/stable-diffusion-v1-5": "sd15",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "sd15",
    "timbrooks/instruct-pix2pix": "ip2p",
    "stabilityai/stable-diffusion-2-1-unclip": "sd21-unclip",
}


def tiny_architecture(kind: str) -> dict[str, Any]:
    """The tiny random-weight models of :mod:`augdiff.sd.tiny`, as an architecture."""
    arch: dict[str, Any] = dict(kind=kind, unet=tiny.unet_config(kind), vae=tiny.vae_config(),
                                text=tiny.text_config(1000),
                                scheduler=dict(SD_SCHEDULER), noising=dict(UNCLIP_NOISING))
    if kind == "unclip":
        arch["vision"] = tiny.vision_config()
    return arch


DEFAULT_FOR_KIND = {"txt2img": "sd15", "ip2p": "ip2p", "unclip": "sd21-unclip"}


def architecture_of(path: str, *, tiny: bool, kind: str) -> dict[str, Any]:
    """The architecture a method config's model fields name: the tiny models with ``tiny``,
    a published one for a known hub id (:data:`HUB_IDS`) or architecture name, the kind's
    published model (:data:`DEFAULT_FOR_KIND`) for an empty path, else the ``config.json``
    files of a local diffusers folder (or cached hub snapshot)."""
    if tiny:
        return tiny_architecture(kind)
    name = HUB_IDS.get(path, path) or DEFAULT_FOR_KIND[kind]
    if name in ARCHITECTURES:
        arch = ARCHITECTURES[name]
        if arch["kind"] != kind:
            raise ValueError(f"model {path!r} is a {arch['kind']!r} model, the method needs a "
                             f"{kind!r} model")
        return arch
    root = loading.resolve_model_path(path)
    read = lambda *p: loading._read_json(os.path.join(root, *p), p[0])  # noqa: E731
    arch = dict(kind=kind, unet=read("unet", "config.json"), vae=read("vae", "config.json"),
                text=read("text_encoder", "config.json"),
                scheduler=loading._scheduler_config(root, "scheduler"))
    if kind == "unclip":
        arch["vision"] = read("image_encoder", "config.json")
        arch["noising"] = loading._scheduler_config(root, "image_noising_scheduler")
    return arch


def abstract_sd(arch: dict[str, Any], dtype: Any = jnp.bfloat16) -> tuple[Any, dict]:
    """``(SDComponents, params)`` of an architecture, the parameters as ``jax.ShapeDtypeStruct``
    in ``dtype`` (as :func:`augdiff.sd.loading.load_sd` casts them). No tokenizer: programs
    built from these take token embeddings."""
    from diffusers import FlaxAutoencoderKL, FlaxUNet2DConditionModel
    from diffusers.models.embeddings_flax import FlaxTimestepEmbedding
    from transformers import (
        CLIPTextConfig,
        CLIPVisionConfig,
        FlaxCLIPTextModel,
        FlaxCLIPVisionModel,
    )

    dtype = jnp.dtype(dtype)
    unet_cfg = {k: v for k, v in arch["unet"].items() if not k.startswith("_")}
    class_dim = int(unet_cfg.pop("projection_class_embeddings_input_dim", 0) or 0)
    unet_cfg.pop("class_embed_type", None)
    unet = FlaxUNet2DConditionModel.from_config(unet_cfg, dtype=dtype)
    vae = FlaxAutoencoderKL.from_config(
        {k: v for k, v in arch["vae"].items() if not k.startswith("_")}, dtype=dtype)
    text_keys = set(CLIPTextConfig().to_dict())
    text = FlaxCLIPTextModel(CLIPTextConfig(**{k: v for k, v in arch["text"].items()
                                               if k in text_keys}), dtype=dtype, _do_init=False)
    params: dict[str, Any] = {"unet": loading.unet_abstract(unet),
                              "vae": loading.vae_abstract(vae),
                              "text_encoder": loading.text_encoder_abstract(text)}
    extra: dict[str, Any] = {}
    if arch["kind"] == "unclip":
        vision_keys = set(CLIPVisionConfig().to_dict())
        vision = FlaxCLIPVisionModel(CLIPVisionConfig(**{
            k: v for k, v in arch["vision"].items() if k in vision_keys}), dtype=dtype,
            _do_init=False)
        time_dim = 4 * int(unet.block_out_channels[0])
        embed = int(vision.config.projection_dim)
        params.update(
            class_embedding=loading.class_embedding_abstract(class_dim or 2 * embed, time_dim),
            image_encoder=loading.image_encoder_abstract(vision),
            image_normalizer={"mean": jax.ShapeDtypeStruct((1, embed), jnp.float32),
                              "std": jax.ShapeDtypeStruct((1, embed), jnp.float32)})
        extra = dict(image_encoder=vision.module,
                     class_embedding=FlaxTimestepEmbedding(time_embed_dim=time_dim, dtype=dtype),
                     image_noising_scheduler_config=dict(arch["noising"]),
                     clip_image_size=int(vision.config.image_size))
    params = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, dtype if jnp.issubdtype(a.dtype, jnp.floating)
                                       else a.dtype), params)
    components = loading.SDComponents(
        kind=arch["kind"], unet=unet, vae=vae, text_encoder=text.module, tokenizer=None,
        scheduler_config=dict(arch["scheduler"]),
        vae_scaling_factor=float(arch["vae"].get("scaling_factor", 0.18215)), dtype=dtype,
        info={"path": "abstract", "tiny_random": False}, **extra)
    return components, params
