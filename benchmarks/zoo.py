"""Real-size models from their published configurations, with random weights, built by name.

:func:`build` returns a :class:`Built`: the Flax module, its parameter tree as
``jax.ShapeDtypeStruct`` (from ``jax.eval_shape`` of the module's init: nothing is materialised),
``init(key)`` that draws random parameters under ``jax.jit`` (on the default device, never on
the host), and the keyword arguments of the published configuration. Names:

=====================  ==============================================================  ==========
name                   configuration (public ``config.json`` / paper)                  parameters
=====================  ==============================================================  ==========
``sd15-unet``          SD-1.5 UNet: blocks 320/640/1280/1280, 2 layers/block, 8 heads,   859.52 M
                       cross-attention 768, sample 64 (runwayml/stable-diffusion-v1-5)
``sd15-vae``           SD-1.x AutoencoderKL: 128/256/512/512, 4 latent channels          83.65 M
``sd15-text``          CLIP ViT-L/14 text encoder: 12 layers, width 768, 12 heads        123.06 M
``sd21-unclip-unet``   SD-2.1 unCLIP UNet: heads 5/10/20/20 of 64 channels, linear       870.17 M
                       projections, cross-attention 1024, class embedding
                       ``projection`` from 2 × 1024 (image embedding + noise level),
                       sample 96 (stabilityai/stable-diffusion-2-1-unclip)
``ip2p-unet``          InstructPix2Pix UNet: SD-1.5 with 8 input channels                859.53 M
``edm-ddpmpp-cifar10`` EDM DDPM++ CIFAR-10 (Karras et al. 2022, Table 7; augment_dim 9)   55.73 M
``preact_resnet18``    PreAct ResNet-18, CIFAR stem, 10 classes (He et al. 2016b)         11.17 M
``resnet50``           ResNet-50 (bottleneck, v1.5 strides), CIFAR stem, 10 classes       23.52 M
=====================  ==============================================================  ==========

``build(name, tiny=True)`` gives the same kind of model at the tiny sizes of
:mod:`augdiff.sd.tiny` (and the ``tiny`` SongUNet preset, ``preact_resnet_tiny``) for dry runs.

:func:`torch_peer` builds the PyTorch twin of a model (diffusers ``UNet2DConditionModel`` /
``AutoencoderKL``, transformers ``CLIPTextModel``) from the same configuration, and
:func:`flax_params_from_torch` maps its weights onto the Flax tree with the loader's own
renaming rules (:func:`augdiff.sd.loading.convert_pt_state_dict`), so both frameworks run the
same weights.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from augdiff.sd.architectures import (  # noqa: E402  (the published configurations' home)
    CLIP_L14_TEXT,
    IP2P_UNET,
    SD15_UNET,
    SD15_VAE,
    SD21_UNCLIP_UNET,
)

NAMES = (
    "sd15-unet",
    "sd15-vae",
    "sd15-text",
    "sd21-unclip-unet",
    "ip2p-unet",
    "edm-ddpmpp-cifar10",
    "preact_resnet18",
    "resnet50",
)


@dataclasses.dataclass
class Built:
    """A model of :data:`NAMES`: module, abstract parameters and a random initialiser.

    Attributes:
      name: the name it was built from.
      module: the Flax module (diffusers / transformers / augdiff).
      abstract: parameter tree of ``jax.ShapeDtypeStruct`` (the ``params`` collection).
      config: keyword arguments of the configuration.
      kind: ``'unet'``, ``'vae'``, ``'text'``, ``'songunet'`` or ``'classifier'``.
      extra_abstract: non-parameter collections (``batch_stats``) or ``{}``.
    """

    name: str
    module: Any
    abstract: dict
    config: dict
    kind: str
    extra_abstract: dict = dataclasses.field(default_factory=dict)

    @property
    def param_count(self) -> int:
        return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(self.abstract)))

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> dict:
        """Random parameters, drawn on the device under ``jax.jit`` (see :func:`random_like`)."""
        return random_like(self.abstract, key, dtype)


def random_like(abstract: Any, key: jax.Array, dtype: Any = jnp.float32) -> Any:
    """Random weights for an abstract tree, drawn under ``jax.jit`` (no host copy).

    Kernels/embeddings ~ N(0, 1/fan_in) (fan_in = every axis but the last), norm scales 1,
    biases 0: activations keep unit scale through a deep net, which is all speed needs. One
    normal draw of the total size is cut into the leaves (a small program to compile).
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    sizes = [math.prod(leaf.shape) for _, leaf in leaves]

    def draw(k):
        flat = jax.random.normal(k, (sum(sizes),), jnp.float32)
        out, start = [], 0
        for (path, leaf), n in zip(leaves, sizes, strict=True):
            name = str(getattr(path[-1], "key", path[-1]))
            if name == "scale":
                v = jnp.ones(leaf.shape, dtype)
            elif name == "bias" or len(leaf.shape) < 2:
                v = jnp.zeros(leaf.shape, dtype)
            else:
                scale = 1.0 / math.sqrt(max(1, math.prod(leaf.shape[:-1])))
                v = (flat[start:start + n].reshape(leaf.shape) * scale).astype(dtype)
            start += n
            out.append(v)
        return jax.tree_util.tree_unflatten(treedef, out)

    return jax.jit(draw)(key)


def _tiny_configs() -> dict[str, dict[str, Any]]:
    from augdiff.sd import tiny

    return {
        "sd15-unet": tiny.unet_config("txt2img"),
        "ip2p-unet": tiny.unet_config("ip2p"),
        "sd21-unclip-unet": tiny.unet_config("unclip"),
        "sd15-vae": tiny.vae_config(),
        "sd15-text": tiny.text_config(1000),
    }


def config_of(name: str, tiny: bool = False) -> dict[str, Any]:
    """The configuration keyword arguments of ``name`` (real or tiny)."""
    if name not in NAMES:
        raise ValueError(f"unknown model {name!r}; choose from {list(NAMES)}")
    if tiny and name in _tiny_configs():
        return dict(_tiny_configs()[name])
    return dict(
        {
            "sd15-unet": SD15_UNET,
            "ip2p-unet": IP2P_UNET,
            "sd21-unclip-unet": SD21_UNCLIP_UNET,
            "sd15-vae": SD15_VAE,
            "sd15-text": CLIP_L14_TEXT,
        }.get(name, {})
    )


def build(name: str, tiny: bool = False, dtype: Any = jnp.float32) -> Built:
    """Build ``name`` (see the module table); ``dtype`` is the compute dtype of the module."""
    from augdiff.sd import loading

    cfg = config_of(name, tiny)
    if name.endswith("-unet"):
        from diffusers import FlaxUNet2DConditionModel

        unet_cfg = {
            k: v
            for k, v in cfg.items()
            if k not in ("class_embed_type", "projection_class_embeddings_input_dim")
        }
        module = FlaxUNet2DConditionModel.from_config(unet_cfg, dtype=dtype)
        abstract = dict(loading.unet_abstract(module))
        if cfg.get("class_embed_type") == "projection":
            abstract["class_embedding"] = loading.class_embedding_abstract(
                int(cfg["projection_class_embeddings_input_dim"]),
                4 * int(cfg["block_out_channels"][0]),
            )
        return Built(name, module, abstract, cfg, "unet")
    if name == "sd15-vae":
        from diffusers import FlaxAutoencoderKL

        module = FlaxAutoencoderKL.from_config(cfg, dtype=dtype)
        return Built(name, module, loading.vae_abstract(module), cfg, "vae")
    if name == "sd15-text":
        from transformers import CLIPTextConfig, FlaxCLIPTextModel

        model = FlaxCLIPTextModel(CLIPTextConfig(**cfg), dtype=dtype, _do_init=False)
        return Built(name, model.module, loading.text_encoder_abstract(model), cfg, "text")
    if name == "edm-ddpmpp-cifar10":
        from augdiff.models.songunet import SongUNet, songunet_config

        cfg = songunet_config("tiny" if tiny else "cifar10", dtype=dtype)
        module = SongUNet(**cfg)
        res = int(cfg["img_resolution"])
        x = jax.ShapeDtypeStruct((1, res, res, 3), jnp.float32)
        sig = jax.ShapeDtypeStruct((1,), jnp.float32)
        abstract = jax.eval_shape(
            lambda k: module.init(
                {"params": k, "dropout": k}, jnp.zeros(x.shape), jnp.zeros(sig.shape), train=False
            )["params"],
            jax.random.PRNGKey(0),
        )
        return Built(name, module, abstract, cfg, "songunet")
    from augdiff.models.classifiers import abstract_variables, get_classifier

    arch = "preact_resnet_tiny" if (tiny and name == "preact_resnet18") else name
    width = 16 if tiny else 64
    module = get_classifier(arch, num_classes=10, width=width, dtype=dtype)
    variables = abstract_variables(module, 32)
    extra = {k: v for k, v in variables.items() if k != "params"}
    return Built(
        name, module, dict(variables["params"]), {"arch": arch, "width": width}, "classifier", extra
    )


# ------------------------------------------------------------------- PyTorch twins


def torch_peer(name: str, tiny: bool = False) -> Any:
    """The PyTorch model of ``name`` (random init, float32, eval mode) from the same config."""
    cfg = config_of(name, tiny)
    if name.endswith("-unet"):
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel(**cfg).eval()
    if name == "sd15-vae":
        from diffusers import AutoencoderKL

        return AutoencoderKL(**cfg).eval()
    if name == "sd15-text":
        from transformers import CLIPTextConfig, CLIPTextModel

        return CLIPTextModel(CLIPTextConfig(**cfg)).eval()
    raise ValueError(f"no PyTorch twin built here for {name!r}")


def flax_params_from_torch(built: Built, torch_model: Any) -> dict:
    """The Flax parameters holding ``torch_model``'s weights (the loader's name mapping)."""
    from augdiff.sd import loading

    state = {k: v.detach().float().cpu().numpy() for k, v in torch_model.state_dict().items()}
    library = "transformers" if built.kind == "text" else "diffusers"
    return loading.convert_pt_state_dict(
        state, built.abstract, library=library, component=built.name
    )


def sd_components(unet: Built, vae: Built, text: Built, dtype: Any = jnp.float32) -> Any:
    """:class:`augdiff.sd.loading.SDComponents` around built modules (no tokenizer: feed ids)."""
    from augdiff.sd import loading

    kind = (
        "unclip"
        if unet.config.get("class_embed_type")
        else "ip2p"
        if int(unet.config["in_channels"]) == 8
        else "txt2img"
    )
    extra: dict[str, Any] = {}
    if kind == "unclip":
        from diffusers.models.embeddings_flax import FlaxTimestepEmbedding

        extra["class_embedding"] = FlaxTimestepEmbedding(
            time_embed_dim=4 * int(unet.config["block_out_channels"][0]), dtype=dtype
        )
    return loading.SDComponents(
        kind=kind,
        unet=unet.module,
        vae=vae.module,
        text_encoder=text.module,
        tokenizer=None,
        scheduler_config=dict(
            num_train_timesteps=1000,
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            prediction_type="epsilon",
            set_alpha_to_one=False,
            steps_offset=1,
        ),
        vae_scaling_factor=0.18215,
        dtype=jnp.dtype(dtype),
        info={"tiny_random": False},
        **extra,
    )


def sd_params(unet: Any, vae: Any, text: Any) -> dict:
    """The ``params`` dict of :func:`sd_components` from the three trees (arrays or abstract):
    an unCLIP UNet's ``class_embedding`` moves to the top level, as the loader returns it."""
    unet = dict(unet)
    out = {"unet": unet, "vae": vae, "text_encoder": text}
    if "class_embedding" in unet:
        out["class_embedding"] = unet.pop("class_embedding")
    return out


def shapes(tree: Any) -> Any:
    """``jax.ShapeDtypeStruct`` of every array leaf."""
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), tree)


Fn = Callable[..., Any]
