"""Load Stable Diffusion 1.x / 2.x components into diffusers' and transformers' Flax classes.

A model is a diffusers-format directory (``model_index.json`` plus one folder per component)
or a hub id already in the local Hugging Face cache (nothing is downloaded). Each component's
weights come either from Flax msgpack files or from PyTorch safetensors, which are converted
here **without torch**: ``safetensors.numpy.load_file`` reads the tensors and the key renaming
and transposition rules of diffusers / transformers (``rename_key_and_reshape_tensor``) map
them onto the parameter tree that ``jax.eval_shape`` of the module's ``init`` predicts, so no
model is ever initialised eagerly.

Loading is strict: a missing component, a missing/unexpected/misshapen weight, or components
that do not fit together (cross-attention width vs. text encoder, UNet vs. VAE channels) raise
:class:`ModelLoadError` naming the component. In particular an unCLIP checkpoint
(``class_embed_type='projection'`` in the UNet config, or a ``StableUnCLIP*`` model index) is
never loaded without its image conditioning: diffusers' Flax UNet has no ``class_embed_type``
and would silently drop ``class_embedding``, so this module loads those weights itself, into
``params['class_embedding']``, for :mod:`augdiff.sd.unclip` to apply.

Parameters are returned as one plain dict, separate from the (stateless) modules::

    params = {"unet": ..., "vae": ..., "text_encoder": ...,
              # unCLIP only:
              "class_embedding": ..., "image_encoder": {"vision_model": ...,
              "visual_projection": {"kernel": ...}}, "image_normalizer": {"mean", "std"}}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from flax.traverse_util import flatten_dict, unflatten_dict

from augdiff.files import atomic_write

TINY_MARKER = "AUGDIFF_TINY_RANDOM_WEIGHTS.txt"
"""File written by :func:`augdiff.sd.tiny.make_tiny_sd` at the root of a tiny random model."""

KINDS = ("txt2img", "ip2p", "unclip")

_UNCLIP_PIPELINES = ("StableUnCLIPImg2ImgPipeline", "StableUnCLIPPipeline")
_IP2P_PIPELINES = ("StableDiffusionInstructPix2PixPipeline",)

# Files per component and format, in the layout diffusers / transformers write.
_DIFFUSERS_FILES = {
    "flax": "diffusion_flax_model.msgpack",
    "pytorch": "diffusion_pytorch_model.safetensors",
}
_TRANSFORMERS_FILES = {"flax": "flax_model.msgpack", "pytorch": "model.safetensors"}
# Buffers some PyTorch checkpoints carry that have no Flax parameter.
_IGNORED_PT_SUFFIXES = ("position_ids", "num_batches_tracked")


class ModelLoadError(ValueError):
    """A Stable Diffusion component is missing, malformed or incompatible; the message names it."""


@dataclasses.dataclass(frozen=True, eq=False)
class SDComponents:
    """The stateless modules of a Stable Diffusion model (parameters live in a separate dict).

    Hashable by identity, so it can be a static argument of ``jax.jit``.

    Attributes:
      kind: ``'txt2img'`` (SD text-to-image / img2img), ``'ip2p'`` (InstructPix2Pix, UNet with
        ``2 * latent_channels`` inputs) or ``'unclip'`` (stable-diffusion-2-1-unclip style).
      unet: ``FlaxUNet2DConditionModel`` (takes NCHW latents).
      vae: ``FlaxAutoencoderKL``.
      text_encoder: ``FlaxCLIPTextModule`` (the linen module of ``FlaxCLIPTextModel``).
      tokenizer: ``CLIPTokenizer``.
      scheduler_config: the denoising scheduler's ``scheduler_config.json`` as a dict.
      vae_scaling_factor: latent scale (0.18215 for SD-1.x/2.x).
      image_encoder: ``FlaxCLIPVisionModule`` (unCLIP only), its projection is in the params.
      class_embedding: ``FlaxTimestepEmbedding`` applied to the noised image embedding
        (unCLIP only; see :mod:`augdiff.sd.unclip`).
      image_noising_scheduler_config: DDPM config used to noise-augment image embeddings.
      clip_image_size / clip_image_mean / clip_image_std: CLIP image pre-processing.
      info: provenance (path, pipeline class, weight format, ``tiny_random``).
    """

    kind: str
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict
    vae_scaling_factor: float
    dtype: Any = jnp.float32
    image_encoder: Any = None
    class_embedding: Any = None
    image_noising_scheduler_config: dict | None = None
    clip_image_size: int = 224
    clip_image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    clip_image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    info: dict = dataclasses.field(default_factory=dict)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def vae_scale_factor(self) -> int:
        """Spatial down-sampling of the VAE, ``2 ** (len(block_out_channels) - 1)``."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def max_length(self) -> int:
        return int(self.tokenizer.model_max_length)

    @property
    def image_embed_dim(self) -> int:
        if self.image_encoder is None:
            raise ValueError(f"model kind {self.kind!r} has no CLIP image encoder")
        return int(self.image_encoder.config.projection_dim)


# --------------------------------------------------------------------------- helpers


def resolve_model_path(path_or_id: str | os.PathLike) -> str:
    """A local directory, or the cached snapshot of a hub id (never downloads)."""
    path = os.fspath(path_or_id)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise ModelLoadError(
            f"model path {path!r} is a file, expected a diffusers-format directory"
        )
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(path, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - any hub failure means "not available offline"
        raise ModelLoadError(
            f"model {path!r} is neither a local directory nor a hub id in the local cache "
            f"(no network is used): {e}"
        ) from e


def _read_json(path: str, component: str) -> dict:
    if not os.path.isfile(path):
        raise ModelLoadError(f"component {component!r}: missing {os.path.basename(path)} ({path})")
    with open(path) as f:
        return json.load(f)


def _weights_file(
    folder: str, files: Mapping[str, str], weights: str, component: str
) -> tuple[str, str]:
    """``(format, path)`` of the weights of one component, honouring ``weights``."""
    if not os.path.isdir(folder):
        raise ModelLoadError(f"component {component!r} is missing: no folder {folder}")
    order = {"auto": ("flax", "pytorch"), "flax": ("flax",), "pytorch": ("pytorch",)}[weights]
    for fmt in order:
        p = os.path.join(folder, files[fmt])
        if os.path.isfile(p) or os.path.isfile(p + ".index.json"):
            return fmt, p
    wanted = " or ".join(files[f] for f in order)
    raise ModelLoadError(f"component {component!r}: no weights ({wanted}) in {folder}")


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    if os.path.isfile(path):
        return load_file(path)
    index = _read_json(path + ".index.json", os.path.basename(path))
    out: dict[str, np.ndarray] = {}
    for shard in sorted(set(index["weight_map"].values())):
        out.update(load_file(os.path.join(os.path.dirname(path), shard)))
    return out


def _safetensors_keys(path: str) -> list[str]:
    """Tensor names of a (possibly sharded) safetensors checkpoint, without reading tensors."""
    from safetensors import safe_open

    if os.path.isfile(path):
        with safe_open(path, framework="numpy") as f:
            return list(f.keys())
    return list(_read_json(path + ".index.json", os.path.basename(path))["weight_map"])


def pt_to_flax_key(
    pt_key: str, shape: tuple[int, ...], abstract_flat: Mapping[tuple[str, ...], Any], library: str
) -> tuple[tuple[str, ...], str]:
    """The Flax key of a PyTorch weight and its layout change: ``'same'``, ``'conv'``, ``'linear'``.

    Uses diffusers' / transformers' own renaming rules (the ones their ``from_pt`` uses);
    ``abstract_flat`` is the flattened ``jax.eval_shape`` parameter tree. Used in both
    directions (:func:`pt_to_flax_array` / :func:`flax_to_pt_array`).
    """
    probe = np.empty(shape, np.float32)
    if library == "diffusers":
        from diffusers.models.modeling_flax_pytorch_utils import (
            rename_key,
            rename_key_and_reshape_tensor,
        )

        key, out = rename_key_and_reshape_tensor(
            tuple(rename_key(pt_key).split(".")), probe, abstract_flat
        )
    else:
        from transformers.modeling_flax_pytorch_utils import rename_key_and_reshape_tensor

        key, out = rename_key_and_reshape_tensor(tuple(pt_key.split(".")), probe, abstract_flat, "")
    if out.shape == probe.shape and (probe.ndim < 2 or key[-1] != "kernel"):
        return tuple(key), "same"
    return tuple(key), "conv" if probe.ndim == 4 else "linear"


def pt_to_flax_array(a: np.ndarray, layout: str) -> np.ndarray:
    """PyTorch OIHW conv / (out, in) linear weight -> Flax HWIO / (in, out) kernel."""
    if layout == "conv":
        return a.transpose(2, 3, 1, 0)
    return a.T if layout == "linear" else a


def flax_to_pt_array(a: np.ndarray, layout: str) -> np.ndarray:
    """Inverse of :func:`pt_to_flax_array`."""
    if layout == "conv":
        return a.transpose(3, 2, 0, 1)
    return a.T if layout == "linear" else a


def convert_pt_state_dict(
    pt_state: Mapping[str, np.ndarray], abstract: Any, *, library: str, component: str
) -> dict:
    """PyTorch (numpy) state dict -> Flax param tree shaped like ``abstract``; strict."""
    abstract_flat = flatten_dict(abstract)
    flat: dict[tuple[str, ...], np.ndarray] = {}
    unexpected = []
    for pt_key, tensor in pt_state.items():
        if pt_key.endswith(_IGNORED_PT_SUFFIXES):
            continue
        key, layout = pt_to_flax_key(pt_key, tuple(tensor.shape), abstract_flat, library)
        if key not in abstract_flat:
            unexpected.append(pt_key)
            continue
        flat[key] = pt_to_flax_array(np.asarray(tensor), layout)
    if unexpected:
        raise ModelLoadError(
            f"component {component!r}: {len(unexpected)} unexpected weight(s) in the PyTorch "
            f"checkpoint, e.g. {unexpected[:5]} (does the config match the weights?)"
        )
    return check_params(unflatten_dict(flat), abstract, component)


def check_params(params: Any, abstract: Any, component: str) -> dict:
    """Verify ``params`` has exactly the keys and shapes of ``abstract``; return float32 numpy."""
    got, want = flatten_dict(params), flatten_dict(abstract)
    missing = sorted("/".join(k) for k in set(want) - set(got))
    extra = sorted("/".join(k) for k in set(got) - set(want))
    if missing:
        raise ModelLoadError(
            f"component {component!r}: {len(missing)} missing weight(s), e.g. {missing[:5]}"
        )
    if extra:
        raise ModelLoadError(
            f"component {component!r}: {len(extra)} unexpected weight(s), e.g. {extra[:5]}"
        )
    for k, v in got.items():
        if tuple(v.shape) != tuple(want[k].shape):
            raise ModelLoadError(
                f"component {component!r}: weight {'/'.join(k)} has shape {tuple(v.shape)}, "
                f"the config expects {tuple(want[k].shape)}"
            )
    return unflatten_dict({k: np.asarray(v, np.float32) for k, v in got.items()})


# ------------------------------------------------------------ converted-weights cache

WEIGHTS_CACHE_VERSION = 1
"""Bumped whenever the conversion rules change, so stale converted copies are never read."""


def weights_cache_dir() -> str | None:
    """Where Flax-layout copies of converted PyTorch weights live: ``AUGDIFF_WEIGHTS_CACHE``
    (``off`` disables the cache), default ``~/.cache/augdiff/weights``."""
    v = os.environ.get("AUGDIFF_WEIGHTS_CACHE", "")
    if v.strip().lower() in ("0", "off", "none", "false", "no"):
        return None
    return v or os.path.join(os.path.expanduser("~"), ".cache", "augdiff", "weights")


def _source_files(wpath: str) -> list[str]:
    if os.path.isfile(wpath):
        return [wpath]
    index = wpath + ".index.json"
    shards = sorted(set(_read_json(index, os.path.basename(wpath))["weight_map"].values()))
    return [index] + [os.path.join(os.path.dirname(wpath), s) for s in shards]


def source_hash(wpath: str, cache_dir: str | None = None) -> str:
    """SHA-256 of the bytes of a weights file (or of a sharded checkpoint's index + shards).

    The digest of a file is remembered in ``<cache_dir>/hashes.json`` under its real path,
    size and modification time, so an unchanged multi-GB checkpoint is hashed once; any change
    of size or mtime re-hashes it.
    """
    memo_path = os.path.join(cache_dir, "hashes.json") if cache_dir else None
    memo: dict[str, str] = {}
    if memo_path and os.path.isfile(memo_path):
        try:
            with open(memo_path) as f:
                memo = json.load(f)
        except (OSError, ValueError):
            memo = {}
    total = hashlib.sha256()
    changed = False
    for path in _source_files(wpath):
        st = os.stat(path)
        stamp = f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}"
        digest = memo.get(stamp)
        if digest is None:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 24), b""):
                    h.update(chunk)
            digest = memo[stamp] = h.hexdigest()
            changed = True
        total.update(os.path.basename(path).encode() + b"\0" + digest.encode())
    if memo_path and changed:
        atomic_write(memo_path, json.dumps(memo).encode())
    return total.hexdigest()


def _abstract_digest(abstract: Any) -> str:
    items = sorted(("/".join(k), tuple(v.shape)) for k, v in flatten_dict(abstract).items())
    return hashlib.sha256(repr(items).encode()).hexdigest()[:16]


def convert_pt_cached(
    wpath: str, abstract: Any, *, library: str, component: str, log: dict | None = None
) -> dict:
    """:func:`convert_pt_state_dict` of the safetensors at ``wpath``, through the cache.

    The converted (Flax-layout, float32) tree is written as msgpack to
    :func:`weights_cache_dir`, named by the source's :func:`source_hash`, the parameter tree's
    shapes and :data:`WEIGHTS_CACHE_VERSION`; a later load of the same source reads that copy
    (seconds) instead of converting again. A changed source file has another hash, so its old
    copy is never used. The copy is checked against ``abstract`` like any Flax checkpoint.
    ``log[component]`` records ``'hit'``, ``'miss'`` (converted and written) or ``'off'``.
    """
    cache_dir = weights_cache_dir()
    status = "off"
    target = None
    if cache_dir is not None:
        try:
            key = source_hash(wpath, cache_dir)
            target = os.path.join(
                cache_dir,
                f"{component}-{library}-{key[:32]}-{_abstract_digest(abstract)}"
                f"-v{WEIGHTS_CACHE_VERSION}.msgpack",
            )
        except OSError as e:
            warnings.warn(f"weights cache disabled for {component!r}: {e}", stacklevel=2)
    params = None
    if target is not None and os.path.isfile(target):
        try:
            params = check_params(_load_msgpack(target, component), abstract, component)
            status = "hit"
        except ModelLoadError as e:  # a damaged copy: convert again and overwrite it
            warnings.warn(f"ignoring a bad cached copy of {component!r}: {e}", stacklevel=2)
    if params is None:
        params = convert_pt_state_dict(
            _load_safetensors(wpath), abstract, library=library, component=component
        )
        if target is not None:
            try:
                atomic_write(target, serialization.msgpack_serialize(params))
                status = "miss"
            except OSError as e:
                warnings.warn(f"cannot write the weights cache for {component!r}: {e}",
                              stacklevel=2)
    if log is not None:
        log[component] = status
    return params


def _load_msgpack(path: str, component: str) -> dict:
    with open(path, "rb") as f:
        try:
            return serialization.msgpack_restore(f.read())
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"component {component!r}: cannot read {path}: {e}") from e


def cast_params(params: Any, dtype: Any) -> Any:
    """Cast floating-point leaves to ``dtype`` (diffusers' ``to_bf16`` is broken on new jax)."""
    dtype = jnp.dtype(dtype)

    def cast(x):
        x = jnp.asarray(x)
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree_util.tree_map(cast, params)


# --------------------------------------------------------------------- abstract trees


def unet_abstract(unet: Any) -> dict:
    return jax.eval_shape(unet.init_weights, jax.random.PRNGKey(0))


def vae_abstract(vae: Any) -> dict:
    return jax.eval_shape(vae.init_weights, jax.random.PRNGKey(0))


def text_encoder_abstract(model: Any) -> dict:
    return jax.eval_shape(lambda k: model.init_weights(k, model.input_shape), jax.random.PRNGKey(0))


def image_encoder_abstract(model: Any) -> dict:
    """Vision tower plus ``visual_projection`` (what ``CLIPVisionModelWithProjection`` holds)."""
    tree = dict(text_encoder_abstract(model))
    cfg = model.config
    tree["visual_projection"] = {
        "kernel": jax.ShapeDtypeStruct((cfg.hidden_size, cfg.projection_dim), jnp.float32)
    }
    return tree


def class_embedding_abstract(in_dim: int, time_embed_dim: int) -> dict:
    """``TimestepEmbedding(in_dim, time_embed_dim)``: ``linear_1`` -> SiLU -> ``linear_2``."""
    sds = jax.ShapeDtypeStruct
    return {
        "linear_1": {
            "kernel": sds((in_dim, time_embed_dim), jnp.float32),
            "bias": sds((time_embed_dim,), jnp.float32),
        },
        "linear_2": {
            "kernel": sds((time_embed_dim, time_embed_dim), jnp.float32),
            "bias": sds((time_embed_dim,), jnp.float32),
        },
    }


# ------------------------------------------------------------------ component loaders


def _load_diffusers_component(
    root: str, name: str, cls: Any, weights: str, dtype: Any, cache_log: dict | None = None
) -> tuple[Any, dict, dict, dict | None]:
    """``(module, params, config, class_embedding_params_or_None)`` of a diffusers model."""
    folder = os.path.join(root, name)
    config = _read_json(os.path.join(folder, "config.json"), name)
    fmt, wpath = _weights_file(folder, _DIFFUSERS_FILES, weights, name)
    try:
        module = cls.from_config(config, dtype=dtype)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(
            f"component {name!r}: config does not build {cls.__name__}: {e}"
        ) from e
    if isinstance(module, tuple):
        module = module[0]
    abstract = unet_abstract(module) if name == "unet" else vae_abstract(module)
    class_abstract = None
    if name == "unet":
        class_abstract = _unet_class_embedding_abstract(config, module)
    full_abstract = dict(abstract)
    if class_abstract is not None:
        full_abstract["class_embedding"] = class_abstract
    if fmt == "flax":
        raw = _load_msgpack(wpath, name)
        if class_abstract is not None and "class_embedding" not in raw:
            raise ModelLoadError(
                f"component {name!r}: unCLIP UNet "
                f"(class_embed_type={config.get('class_embed_type')!r}) "
                f"but its class_embedding weights are missing from {wpath}; refusing to load it "
                "without its image conditioning"
            )
        _refuse_orphan_class_embedding(name, class_abstract, "class_embedding" in raw)
        params = check_params(raw, full_abstract, name)
    else:
        pt_keys = _safetensors_keys(wpath)
        if class_abstract is not None and not any(
            k.startswith("class_embedding.") for k in pt_keys
        ):
            raise ModelLoadError(
                f"component {name!r}: unCLIP UNet "
                f"(class_embed_type={config.get('class_embed_type')!r}) "
                f"but its class_embedding weights are missing from {wpath}; refusing to load it "
                "without its image conditioning"
            )
        _refuse_orphan_class_embedding(
            name, class_abstract, any(k.startswith("class_embedding.") for k in pt_keys)
        )
        params = convert_pt_cached(
            wpath, full_abstract, library="diffusers", component=name, log=cache_log
        )
    class_params = params.pop("class_embedding", None)
    info = {"format": fmt}
    return module, params, config | {"_augdiff_weights": info}, class_params


def _refuse_orphan_class_embedding(name: str, class_abstract: Any, has_weights: bool) -> None:
    if name == "unet" and class_abstract is None and has_weights:
        raise ModelLoadError(
            "component 'unet': the weights hold an unCLIP class_embedding but the config has no "
            "class_embed_type='projection'; refusing to load it without its image conditioning"
        )


def _unet_class_embedding_abstract(config: Mapping[str, Any], unet: Any) -> dict | None:
    cet = config.get("class_embed_type")
    unsupported = {
        k: config.get(k)
        for k in (
            "addition_embed_type",
            "encoder_hid_dim",
            "time_embedding_type",
            "time_cond_proj_dim",
        )
        if config.get(k) not in (None, "positional")
    }
    if unsupported:
        raise ModelLoadError(f"component 'unet': unsupported config entries {unsupported}")
    if config.get("num_class_embeds") is not None:
        raise ModelLoadError(
            "component 'unet': num_class_embeds (class-label UNets) is not supported"
        )
    if cet is None:
        return None
    if cet != "projection":
        raise ModelLoadError(
            f"component 'unet': class_embed_type={cet!r} is not supported (only the unCLIP "
            "'projection' image conditioning)"
        )
    if config.get("class_embeddings_concat"):
        raise ModelLoadError("component 'unet': class_embeddings_concat=True is not supported")
    in_dim = config.get("projection_class_embeddings_input_dim")
    if not in_dim:
        raise ModelLoadError(
            "component 'unet': class_embed_type='projection' needs "
            "projection_class_embeddings_input_dim"
        )
    return class_embedding_abstract(int(in_dim), 4 * int(unet.block_out_channels[0]))


def _load_transformers_component(
    root: str,
    name: str,
    config_cls: Any,
    model_cls: Any,
    weights: str,
    dtype: Any,
    vision: bool,
    cache_log: dict | None = None,
) -> tuple[Any, dict, str]:
    """``(flax_model_wrapper, params, format)`` of a transformers CLIP tower."""
    folder = os.path.join(root, name)
    _read_json(os.path.join(folder, "config.json"), name)
    fmt, wpath = _weights_file(folder, _TRANSFORMERS_FILES, weights, name)
    try:
        config = config_cls.from_pretrained(folder)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"component {name!r}: bad config.json: {e}") from e
    model = model_cls(config, dtype=dtype, _do_init=False)
    abstract = image_encoder_abstract(model) if vision else text_encoder_abstract(model)
    if fmt == "flax":
        raw = _load_msgpack(wpath, name)
        if vision and "visual_projection" not in raw:
            raise ModelLoadError(
                f"component {name!r}: no visual_projection weights in {wpath} (need a CLIP "
                "vision model *with projection*)"
            )
        params = check_params(raw, abstract, name)
    else:
        if vision and "visual_projection.weight" not in _safetensors_keys(wpath):
            raise ModelLoadError(
                f"component {name!r}: no visual_projection.weight in {wpath} (need "
                "CLIPVisionModelWithProjection weights)"
            )
        params = convert_pt_cached(
            wpath, abstract, library="transformers", component=name, log=cache_log
        )
    return model, params, fmt


def _load_image_normalizer(root: str) -> dict:
    folder = os.path.join(root, "image_normalizer")
    for fname in ("diffusion_pytorch_model.safetensors", "diffusion_flax_model.msgpack"):
        p = os.path.join(folder, fname)
        if os.path.isfile(p):
            raw = (
                _load_safetensors(p)
                if fname.endswith("safetensors")
                else _load_msgpack(p, "image_normalizer")
            )
            if set(raw) != {"mean", "std"}:
                raise ModelLoadError(
                    f"component 'image_normalizer': expected weights mean/std, found {sorted(raw)}"
                )
            return {k: np.asarray(v, np.float32).reshape(1, -1) for k, v in raw.items()}
    raise ModelLoadError(f"component 'image_normalizer' is missing: no weights in {folder}")


def _scheduler_config(root: str, name: str) -> dict:
    cfg = _read_json(os.path.join(root, name, "scheduler_config.json"), name)
    return {k: v for k, v in cfg.items() if not k.startswith("_") or k == "_class_name"}


# ------------------------------------------------------------------------- main entry


def load_sd(
    path_or_id: str | os.PathLike,
    *,
    dtype: Any = jnp.float32,
    weights: str = "auto",
    kind: str | None = None,
) -> tuple[SDComponents, dict]:
    """Load a Stable Diffusion model: ``(components, params)``.

    Args:
      path_or_id: diffusers-format directory, or a hub id present in the local cache.
      dtype: ``float32`` or ``bfloat16`` (compute dtype of the modules; parameters are cast).
      weights: ``'auto'`` (Flax msgpack if present, else PyTorch safetensors), ``'flax'`` or
        ``'pytorch'``.
      kind: expected kind (``'txt2img'``, ``'ip2p'``, ``'unclip'``); ``None`` infers it from
        ``model_index.json`` and the UNet config. A mismatch raises.

    Raises:
      ModelLoadError: naming the missing / malformed / incompatible component.
    """
    from diffusers import FlaxAutoencoderKL, FlaxUNet2DConditionModel
    from diffusers.models.embeddings_flax import FlaxTimestepEmbedding
    from transformers import (
        CLIPTextConfig,
        CLIPTokenizer,
        CLIPVisionConfig,
        FlaxCLIPTextModel,
        FlaxCLIPVisionModel,
    )

    dtype = jnp.dtype(dtype)
    if dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
        raise ModelLoadError(f"dtype must be float32 or bfloat16, got {dtype}")
    if weights not in ("auto", "flax", "pytorch"):
        raise ModelLoadError(f"weights must be 'auto', 'flax' or 'pytorch', got {weights!r}")
    root = resolve_model_path(path_or_id)
    index_path = os.path.join(root, "model_index.json")
    model_index = _read_json(index_path, "model_index") if os.path.isfile(index_path) else {}
    pipeline_class = str(model_index.get("_class_name", ""))

    cache_log: dict[str, str] = {}
    unet, unet_params, unet_config, class_params = _load_diffusers_component(
        root, "unet", FlaxUNet2DConditionModel, weights, dtype, cache_log
    )
    vae, vae_params, vae_config, _ = _load_diffusers_component(
        root, "vae", FlaxAutoencoderKL, weights, dtype, cache_log
    )
    text_model, text_params, text_fmt = _load_transformers_component(
        root, "text_encoder", CLIPTextConfig, FlaxCLIPTextModel, weights, dtype, vision=False,
        cache_log=cache_log,
    )
    tok_dir = os.path.join(root, "tokenizer")
    if not os.path.isdir(tok_dir):
        raise ModelLoadError(f"component 'tokenizer' is missing: no folder {tok_dir}")
    try:
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"component 'tokenizer': cannot load from {tok_dir}: {e}") from e
    scheduler_config = _scheduler_config(root, "scheduler")

    is_unclip_index = pipeline_class.replace("Flax", "") in _UNCLIP_PIPELINES
    has_class_embed = class_params is not None
    if is_unclip_index and not has_class_embed:
        raise ModelLoadError(
            f"component 'unet': model_index says {pipeline_class} but the UNet config has no "
            "class_embed_type='projection'; refusing to load an unCLIP model without its image "
            "conditioning"
        )
    latent = int(vae_config["latent_channels"])
    in_ch = int(unet_config.get("in_channels", 4))
    inferred = "unclip" if has_class_embed else ("ip2p" if in_ch == 2 * latent else "txt2img")
    if pipeline_class.replace("Flax", "") in _IP2P_PIPELINES and inferred != "ip2p":
        raise ModelLoadError(
            f"component 'unet': {pipeline_class} needs in_channels = 2 x {latent}, got {in_ch}"
        )
    if kind is not None and kind != inferred:
        raise ModelLoadError(f"expected a {kind!r} model, {root} holds a {inferred!r} model")
    kind = inferred

    # Compatibility between components.
    want_in = 2 * latent if kind == "ip2p" else latent
    if in_ch != want_in or int(unet_config.get("out_channels", 4)) != latent:
        raise ModelLoadError(
            f"components 'unet' and 'vae' do not fit: UNet in/out channels {in_ch}/"
            f"{unet_config.get('out_channels')} vs VAE latent_channels {latent} ({kind})"
        )
    if int(unet.cross_attention_dim) != int(text_model.config.hidden_size):
        raise ModelLoadError(
            f"components 'unet' and 'text_encoder' do not fit: cross_attention_dim "
            f"{unet.cross_attention_dim} vs text hidden_size {text_model.config.hidden_size}"
        )
    if tokenizer.model_max_length > text_model.config.max_position_embeddings:
        raise ModelLoadError(
            f"components 'tokenizer' and 'text_encoder' do not fit: model_max_length "
            f"{tokenizer.model_max_length} > max_position_embeddings "
            f"{text_model.config.max_position_embeddings}"
        )

    params: dict[str, Any] = {"unet": unet_params, "vae": vae_params, "text_encoder": text_params}
    formats = {
        unet_config["_augdiff_weights"]["format"],
        vae_config["_augdiff_weights"]["format"],
        text_fmt,
    }
    extra: dict[str, Any] = {}
    if kind == "unclip":
        vision_model, vision_params, vision_fmt = _load_transformers_component(
            root,
            "image_encoder",
            CLIPVisionConfig,
            FlaxCLIPVisionModel,
            weights,
            dtype,
            vision=True,
            cache_log=cache_log,
        )
        formats.add(vision_fmt)
        embed_dim = int(vision_model.config.projection_dim)
        in_dim = int(unet_config["projection_class_embeddings_input_dim"])
        if in_dim != 2 * embed_dim:
            raise ModelLoadError(
                f"components 'unet' and 'image_encoder' do not fit: projection_class_embeddings_"
                f"input_dim {in_dim} != 2 x image embedding dim {embed_dim} "
                "(embedding + noise level)"
            )
        normalizer = _load_image_normalizer(root)
        if normalizer["mean"].shape[-1] != embed_dim:
            raise ModelLoadError(
                f"components 'image_normalizer' and 'image_encoder' do not fit: "
                f"{normalizer['mean'].shape[-1]} vs {embed_dim}"
            )
        params.update(
            class_embedding=class_params, image_encoder=vision_params, image_normalizer=normalizer
        )
        fe_path = os.path.join(root, "feature_extractor", "preprocessor_config.json")
        fe = _read_json(fe_path, "feature_extractor") if os.path.isfile(fe_path) else {}
        crop = fe.get("crop_size", vision_model.config.image_size)
        crop = crop.get("height", crop) if isinstance(crop, dict) else crop
        extra = dict(
            image_encoder=vision_model.module,
            class_embedding=FlaxTimestepEmbedding(
                time_embed_dim=4 * int(unet.block_out_channels[0]), dtype=dtype
            ),
            image_noising_scheduler_config=_scheduler_config(root, "image_noising_scheduler"),
            clip_image_size=int(crop),
        )
        if "image_mean" in fe:
            extra.update(
                clip_image_mean=tuple(fe["image_mean"]), clip_image_std=tuple(fe["image_std"])
            )

    info = {
        "path": str(path_or_id),
        "resolved_path": root,
        "pipeline_class": pipeline_class or None,
        "weights_format": "+".join(sorted(formats)),
        "tiny_random": os.path.isfile(os.path.join(root, TINY_MARKER))
        or bool(model_index.get("augdiff_tiny_random", False)),
        "dtype": str(dtype),
        "weights_cache": cache_log,
    }
    components = SDComponents(
        kind=kind,
        unet=unet,
        vae=vae,
        text_encoder=text_model.module,
        tokenizer=tokenizer,
        scheduler_config=scheduler_config,
        vae_scaling_factor=float(vae_config.get("scaling_factor", 0.18215)),
        dtype=dtype,
        info=info,
        **extra,
    )
    if dtype != jnp.dtype(jnp.float32):
        params = cast_params(params, dtype)
    else:
        params = jax.tree_util.tree_map(jnp.asarray, params)
    return components, params


def model_label(components: SDComponents) -> str:
    """What a store manifest records as ``model``: ``'tiny-random'`` for test models."""
    return "tiny-random" if components.info.get("tiny_random") else str(components.info.get("path"))
