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
from pathlib import Path
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

# Files per component and format, in the layout diffusers / transformers write; "pytorch" is
# safetensors, else a PyTorch pickle (``save_pretrained(safe_serialization=False)``).
_DIFFUSERS_FILES = {
    "flax": ("diffusion_flax_model.msgpack",),
    "pytorch": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
}
_TRANSFORMERS_FILES = {
    "flax": ("flax_model.msgpack",),
    "pytorch": ("model.safetensors", "pytorch_model.bin"),
}
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
"""Suffixes of a single-file (original LDM layout) Stable Diffusion checkpoint."""
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


def add_variant(name: str, variant: str | None) -> str:
    """``diffusion_pytorch_model.safetensors`` -> ``diffusion_pytorch_model.fp16.safetensors``
    (the variant goes before the last suffix, as diffusers' and transformers' ``_add_variant``;
    a shard index ``x.safetensors.index.json`` becomes ``x.safetensors.index.fp16.json``)."""
    if not variant:
        return name
    head, _, tail = name.rpartition(".")
    return f"{head}.{variant}.{tail}"


def _weights_file(
    folder: str,
    files: Mapping[str, tuple[str, ...]],
    weights: str,
    component: str,
    variant: str | None = None,
) -> tuple[str, str]:
    """``(format, path)`` of the weights of one component, honouring ``weights`` and ``variant``.

    ``format`` is ``'flax'``, ``'pytorch'`` (safetensors) or ``'bin'`` (a PyTorch pickle);
    ``path`` is the weights file or, for a sharded checkpoint, its ``*.index[.variant].json``.
    With a ``variant`` only that variant's files count: a missing variant is an error, never a
    silent fall-back to the default weights.
    """
    if not os.path.isdir(folder):
        raise ModelLoadError(f"component {component!r} is missing: no folder {folder}")
    order = {"auto": ("flax", "pytorch"), "flax": ("flax",), "pytorch": ("pytorch",)}[weights]
    names = [n for fmt in order for n in files[fmt]]
    for name in names:
        fmt = "flax" if name.endswith(".msgpack") else "bin" if name.endswith(".bin") else "pytorch"
        for cand in (add_variant(name, variant), add_variant(name + ".index.json", variant)):
            p = os.path.join(folder, cand)
            if os.path.isfile(p):
                return fmt, p
    wanted = " or ".join(add_variant(n, variant) for n in names)
    if variant:
        present = sorted(f for f in os.listdir(folder) if f.startswith(tuple(
            n.split(".")[0] + "." for n in names)))
        raise ModelLoadError(
            f"component {component!r}: no {variant!r} variant weights ({wanted}) in {folder}; "
            f"weight files there: {present or 'none'}"
        )
    raise ModelLoadError(f"component {component!r}: no weights ({wanted}) in {folder}")


def _source_files(wpath: str) -> list[str]:
    """The files a weights path stands for: itself, or a shard index and its shards."""
    if not wpath.endswith(".json"):
        return [wpath]
    shards = sorted(set(_read_json(wpath, os.path.basename(wpath))["weight_map"].values()))
    return [wpath] + [os.path.join(os.path.dirname(wpath), s) for s in shards]


def _load_pt_file(path: str) -> dict[str, np.ndarray]:
    """Tensors of one safetensors file or PyTorch pickle, as numpy arrays (no code is run)."""
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        try:
            return load_file(path)
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"cannot read safetensors file {path}: {e}") from e
    return load_torch_pickle(path)


def _load_safetensors(wpath: str) -> dict[str, np.ndarray]:
    """All tensors of a PyTorch checkpoint (safetensors or pickle, one file or sharded)."""
    out: dict[str, np.ndarray] = {}
    for f in _source_files(wpath):
        if not f.endswith(".json"):
            out.update(_load_pt_file(f))
    return out


def _safetensors_keys(wpath: str) -> list[str]:
    """Tensor names of a PyTorch checkpoint; read from headers / the index where possible."""
    if wpath.endswith(".json"):
        return list(_read_json(wpath, os.path.basename(wpath))["weight_map"])
    if wpath.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(wpath, framework="numpy") as f:
            return list(f.keys())
    return list(_restricted_unpickle(wpath, keys_only=True))


# ------------------------------------------------------------ PyTorch pickles, safely

# The only globals a PyTorch state dict's pickle needs; anything else is refused (torch absent)
# so a .bin / .ckpt never runs code it carries.
_PICKLE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


def _to_numpy(t: Any) -> np.ndarray:
    import torch

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.numpy()


def load_torch_pickle(path: str) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch pickle (``.bin`` / ``.ckpt``) as numpy, without running its code.

    With torch installed: ``torch.load(path, map_location='cpu', weights_only=True)``. Without
    torch: a restricted unpickler that resolves only the tensor-rebuild globals
    (``torch._utils._rebuild_tensor_v2``, storage types, ``OrderedDict``) and refuses any
    other, reading the storages straight from the zip archive. A Lightning-style
    ``{"state_dict": {...}}`` is unwrapped; non-tensor entries are dropped.
    """
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - refused globals, truncation, not a pickle
            raise ModelLoadError(
                f"cannot load {path} safely (torch.load weights_only=True): "
                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
            ) from e
        convert = _to_numpy
        is_tensor = torch.is_tensor
    else:
        raw = _restricted_unpickle(path)
        convert = np.asarray
        is_tensor = lambda v: isinstance(v, np.ndarray)  # noqa: E731
    if isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping):
        raise ModelLoadError(f"{path} holds a {type(raw).__name__}, not a state dict")
    return {str(k): convert(v) for k, v in raw.items() if is_tensor(v)}


def _restricted_unpickle(path: str, keys_only: bool = False) -> Any:
    """The object of a PyTorch zip pickle, tensors as numpy; only tensor-rebuild globals are
    resolved. ``keys_only``: tensors become ``None`` and no storage is read (key listing)."""
    import pickle
    import zipfile

    if not zipfile.is_zipfile(path):
        raise ModelLoadError(
            f"{path} is not a PyTorch zip checkpoint (a legacy or damaged pickle); "
            "install torch (the 'torch' extra) or convert it to safetensors"
        )
    zf = zipfile.ZipFile(path)
    pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if not pkls:
        raise ModelLoadError(f"{path}: no data.pkl in the archive, not a PyTorch checkpoint")
    prefix = pkls[0][: -len("data.pkl")]
    byteorder = prefix + "byteorder"
    if byteorder in zf.namelist() and zf.read(byteorder).strip() != b"little":
        raise ModelLoadError(f"{path}: big-endian checkpoints are not supported")
    storages: dict[str, np.ndarray] = {}

    class _Storage:
        def __init__(self, name: str) -> None:
            self.name = name

    def rebuild_tensor(storage, offset, size, stride, *_args):
        if keys_only:
            return None
        a = storage
        item = a.itemsize
        return np.lib.stride_tricks.as_strided(
            a[offset:], shape=tuple(size), strides=tuple(s * item for s in stride)
        ).copy()

    def rebuild_parameter(data, *_args):
        return data

    allowed = {
        ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
        ("collections", "OrderedDict"): dict,
        ("torch", "Size"): tuple,
    }
    allowed.update({("torch", n): _Storage(n) for n in _PICKLE_DTYPES})

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) in allowed:
                return allowed[(module, name)]
            raise ModelLoadError(
                f"{path}: refusing to unpickle {module}.{name} (only tensors are loaded without "
                "torch; install torch (the 'torch' extra) or convert it to safetensors)"
            )

        def persistent_load(self, pid: Any) -> np.ndarray:
            if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
                raise ModelLoadError(f"{path}: unexpected persistent id {pid!r:.60}")
            stype, key = pid[1], str(pid[2])
            if not isinstance(stype, _Storage):
                raise ModelLoadError(f"{path}: unsupported storage {stype!r:.60}")
            if keys_only:
                return np.zeros(0, np.float32)
            if key not in storages:
                buf = zf.read(f"{prefix}data/{key}")
                dt = _PICKLE_DTYPES[stype.name]
                if dt == "bfloat16":
                    u = np.frombuffer(buf, np.uint16).astype(np.uint32) << 16
                    storages[key] = u.view(np.float32)
                else:
                    storages[key] = np.frombuffer(buf, dt)
            return storages[key]

    try:
        with zf.open(pkls[0]) as f:
            raw = Unpickler(f).load()
        if keys_only and isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
            raw = raw["state_dict"]
        return raw
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"cannot read PyTorch checkpoint {path}: {e}") from e


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
    wpath: str,
    abstract: Any,
    *,
    library: str,
    component: str,
    log: dict | None = None,
    load: Any = None,
) -> dict:
    """:func:`convert_pt_state_dict` of the safetensors at ``wpath``, through the cache.

    The converted (Flax-layout, float32) tree is written as msgpack to
    :func:`weights_cache_dir`, named by the source's :func:`source_hash`, the parameter tree's
    shapes and :data:`WEIGHTS_CACHE_VERSION`; a later load of the same source reads that copy
    (seconds) instead of converting again. A changed source file has another hash, so its old
    copy is never used. The copy is checked against ``abstract`` like any Flax checkpoint.
    ``log[component]`` records ``'hit'``, ``'miss'`` (converted and written) or ``'off'``.
    ``load()``, when given, returns the PyTorch state dict in diffusers / transformers naming
    (a single-file checkpoint's component, whose file is ``wpath``).
    """
    cache_dir = weights_cache_dir()
    status = "off"
    target = None
    if cache_dir is not None:
        try:
            key = source_hash(wpath, cache_dir)
            target = os.path.join(
                cache_dir,
                f"{component}-{library}{'-single' if load else ''}-{key[:32]}-"
                f"{_abstract_digest(abstract)}"
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
            load() if load else _load_safetensors(wpath), abstract, library=library,
            component=component,
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
    root: str,
    name: str,
    cls: Any,
    weights: str,
    dtype: Any,
    cache_log: dict | None = None,
    variant: str | None = None,
    single: Any = None,
) -> tuple[Any, dict, dict, dict | None]:
    """``(module, params, config, class_embedding_params_or_None)`` of a diffusers model.

    ``single``: a :class:`_SingleFile` whose converted state dict replaces the folder's weights
    (the folder then only gives the config).
    """
    folder = os.path.join(root, name)
    config = _read_json(os.path.join(folder, "config.json"), name)
    if single is None:
        fmt, wpath = _weights_file(folder, _DIFFUSERS_FILES, weights, name, variant)
    else:
        fmt, wpath = "single-file", single.path
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
        pt_keys = list(single.state(name, config)) if single else _safetensors_keys(wpath)
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
            wpath, full_abstract, library="diffusers", component=name, log=cache_log,
            load=(lambda: single.state(name, config)) if single else None,
        )
    class_params = params.pop("class_embedding", None)
    info = {"format": {"bin": "pytorch-bin"}.get(fmt, fmt)}
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
    variant: str | None = None,
    single: Any = None,
) -> tuple[Any, dict, str]:
    """``(flax_model_wrapper, params, format)`` of a transformers CLIP tower (``single``: as
    :func:`_load_diffusers_component`)."""
    folder = os.path.join(root, name)
    _read_json(os.path.join(folder, "config.json"), name)
    if single is None:
        fmt, wpath = _weights_file(folder, _TRANSFORMERS_FILES, weights, name, variant)
    else:
        fmt, wpath = "single-file", single.path
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
            wpath, abstract, library="transformers", component=name, log=cache_log,
            load=(lambda: single.state(name, config.to_dict())) if single else None,
        )
    return model, params, {"bin": "pytorch-bin"}.get(fmt, fmt)


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


# --------------------------------------------------- single-file (original LDM) checkpoints

LDM_PREFIXES = {
    "unet": "model.diffusion_model.",
    "vae": "first_stage_model.",
    "text_encoder": "cond_stage_model.",
}
"""Where each component lives in an original (CompVis / Stability) single-file checkpoint."""

_LDM_RESNET = (
    ("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("out_layers.0.", "norm2."),
    ("out_layers.3.", "conv2."), ("emb_layers.1.", "time_emb_proj."),
    ("skip_connection.", "conv_shortcut."),
)
_LDM_VAE_ATTN = (
    ("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."),
    ("proj_out.", "to_out.0."),
)


def ldm_unet_prefixes(config: Mapping[str, Any]) -> list[tuple[str, str, tuple]]:
    """``(ldm_prefix, diffusers_prefix, inner_renames)`` of an SD-1.x/2.x UNet in the original
    ``openaimodel.UNetModel`` layout, derived from the diffusers UNet config (the mapping of
    diffusers' ``convert_ldm_unet_checkpoint``)."""
    levels = len(config["block_out_channels"])
    lpb = config.get("layers_per_block", 2)
    if not isinstance(lpb, int):
        raise ModelLoadError("component 'unet': per-level layers_per_block is not supported "
                             "for single-file checkpoints")
    down_types = config.get("down_block_types") or ()
    up_types = config.get("up_block_types") or ()
    out = [
        ("time_embed.0.", "time_embedding.linear_1.", ()),
        ("time_embed.2.", "time_embedding.linear_2.", ()),
        ("label_emb.0.0.", "class_embedding.linear_1.", ()),
        ("label_emb.0.2.", "class_embedding.linear_2.", ()),
        ("input_blocks.0.0.", "conv_in.", ()),
        ("out.0.", "conv_norm_out.", ()),
        ("out.2.", "conv_out.", ()),
        ("middle_block.0.", "mid_block.resnets.0.", _LDM_RESNET),
        ("middle_block.1.", "mid_block.attentions.0.", ()),
        ("middle_block.2.", "mid_block.resnets.1.", _LDM_RESNET),
    ]
    for i in range(levels):
        for j in range(lpb):
            n = 1 + i * (lpb + 1) + j
            out.append((f"input_blocks.{n}.0.", f"down_blocks.{i}.resnets.{j}.", _LDM_RESNET))
            if "CrossAttn" in str(down_types[i] if i < len(down_types) else ""):
                out.append((f"input_blocks.{n}.1.", f"down_blocks.{i}.attentions.{j}.", ()))
        if i < levels - 1:
            n = 1 + i * (lpb + 1) + lpb
            out.append((f"input_blocks.{n}.0.op.", f"down_blocks.{i}.downsamplers.0.conv.", ()))
        attn = "CrossAttn" in str(up_types[i] if i < len(up_types) else "")
        for j in range(lpb + 1):
            n = i * (lpb + 1) + j
            out.append((f"output_blocks.{n}.0.", f"up_blocks.{i}.resnets.{j}.", _LDM_RESNET))
            if attn:
                out.append((f"output_blocks.{n}.1.", f"up_blocks.{i}.attentions.{j}.", ()))
        if i < levels - 1:
            n = i * (lpb + 1) + lpb
            out.append((f"output_blocks.{n}.{2 if attn else 1}.conv.",
                        f"up_blocks.{i}.upsamplers.0.conv.", ()))
    return out


def ldm_vae_prefixes(config: Mapping[str, Any]) -> list[tuple[str, str, tuple]]:
    """As :func:`ldm_unet_prefixes` for the VAE (``first_stage_model`` of the checkpoint)."""
    levels = len(config["block_out_channels"])
    lpb = int(config.get("layers_per_block", 2))
    res = (("nin_shortcut.", "conv_shortcut."),)
    out = [("quant_conv.", "quant_conv.", ()), ("post_quant_conv.", "post_quant_conv.", ())]
    for part in ("encoder", "decoder"):
        out += [
            (f"{part}.conv_in.", f"{part}.conv_in.", ()),
            (f"{part}.conv_out.", f"{part}.conv_out.", ()),
            (f"{part}.norm_out.", f"{part}.conv_norm_out.", ()),
            (f"{part}.mid.block_1.", f"{part}.mid_block.resnets.0.", res),
            (f"{part}.mid.block_2.", f"{part}.mid_block.resnets.1.", res),
            (f"{part}.mid.attn_1.", f"{part}.mid_block.attentions.0.", _LDM_VAE_ATTN),
        ]
    for i in range(levels):
        for j in range(lpb):
            out.append((f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}.",
                        res))
        if i < levels - 1:
            out.append((f"encoder.down.{i}.downsample.conv.",
                        f"encoder.down_blocks.{i}.downsamplers.0.conv.", ()))
        k = levels - 1 - i  # the decoder's ``up`` list runs from the lowest resolution
        for j in range(lpb + 1):
            out.append((f"decoder.up.{i}.block.{j}.", f"decoder.up_blocks.{k}.resnets.{j}.", res))
        if i > 0:
            out.append((f"decoder.up.{i}.upsample.conv.",
                        f"decoder.up_blocks.{k}.upsamplers.0.conv.", ()))
    return out


def _rename_by_prefixes(
    state: Mapping[str, np.ndarray], table: list[tuple[str, str, tuple]], component: str
) -> dict[str, np.ndarray]:
    table = sorted(table, key=lambda t: -len(t[0]))
    out: dict[str, np.ndarray] = {}
    unknown = []
    for key, value in state.items():
        for old, new, inner in table:
            if key.startswith(old):
                rest = key[len(old):]
                for a, b in inner:
                    if rest.startswith(a):
                        rest = b + rest[len(a):]
                        break
                out[new + rest] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ModelLoadError(
            f"component {component!r}: {len(unknown)} weight(s) of the single-file checkpoint "
            f"have no place in the config's model, e.g. {unknown[:5]}"
        )
    return out


def ldm_to_diffusers(
    state: Mapping[str, np.ndarray], component: str, config: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """One component of an original-layout checkpoint, renamed to diffusers / transformers
    PyTorch names (``state`` holds the component's keys without their :data:`LDM_PREFIXES`).

    UNet and VAE follow diffusers' ``convert_ldm_unet_checkpoint`` /
    ``convert_ldm_vae_checkpoint`` (the VAE's 1x1-conv attention projections become linear
    weights); the text encoder is either SD-1.x's ``transformer.`` (a transformers CLIP text
    model) or SD-2.x's OpenCLIP ``model.`` (fused ``in_proj`` split into q/k/v; layers past the
    config's ``num_hidden_layers`` dropped, as SD-2 uses the penultimate layer).
    """
    if component == "unet":
        return _rename_by_prefixes(state, ldm_unet_prefixes(config), component)
    if component == "vae":
        out = _rename_by_prefixes(state, ldm_vae_prefixes(config), component)
        for k, v in out.items():
            if ".attentions." in k and k.endswith(".weight") and "group_norm" not in k:
                out[k] = v.reshape(v.shape[:2])
        return out
    if any(k.startswith("transformer.") for k in state):
        out = {}
        for k, v in state.items():
            if not k.startswith("transformer."):
                continue
            k = k[len("transformer."):]
            out[k if k.startswith("text_model.") else "text_model." + k] = v
        return out
    return _open_clip_to_transformers(state, int(config["num_hidden_layers"]))


def _open_clip_to_transformers(state: Mapping[str, np.ndarray], layers: int) -> dict:
    renames = (
        ("ln_1.", "layer_norm1."), ("ln_2.", "layer_norm2."), ("mlp.c_fc.", "mlp.fc1."),
        ("mlp.c_proj.", "mlp.fc2."), ("attn.out_proj.", "self_attn.out_proj."),
    )
    out = {}
    for k, v in state.items():
        if not k.startswith("model."):
            continue
        k = k[len("model."):]
        if k == "token_embedding.weight":
            out["text_model.embeddings.token_embedding.weight"] = v
        elif k == "positional_embedding":
            out["text_model.embeddings.position_embedding.weight"] = v
        elif k.startswith("ln_final."):
            out["text_model.final_layer_norm." + k[len("ln_final."):]] = v
        elif k.startswith("transformer.resblocks."):
            idx, rest = k[len("transformer.resblocks."):].split(".", 1)
            if int(idx) >= layers:
                continue
            pre = f"text_model.encoder.layers.{idx}."
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[1]
                for name, part in zip(("q", "k", "v"), np.split(v, 3, axis=0), strict=True):
                    out[f"{pre}self_attn.{name}_proj.{kind}"] = part
                continue
            for a, b in renames:
                if rest.startswith(a):
                    rest = b + rest[len(a):]
                    break
            out[pre + rest] = v
        elif k in ("text_projection", "logit_scale") or k.startswith("visual."):
            continue
        else:
            out["unexpected." + k] = v
    return out


class _SingleFile:
    """An original-layout checkpoint file, read once, handing out converted components."""

    def __init__(self, path: str, variant: str | None) -> None:
        self.path = path
        self.variant = variant
        self._state: dict[str, np.ndarray] | None = None

    def _all(self) -> dict[str, np.ndarray]:
        if self._state is None:
            state = _load_pt_file(self.path)
            if self.variant == "ema":
                unet = LDM_PREFIXES["unet"]
                ema = {}
                for k in list(state):
                    if k.startswith(unet):
                        flat = "model_ema." + "".join(k.split(".")[1:])
                        if flat not in state:
                            raise ModelLoadError(
                                f"variant 'ema': {self.path} has no EMA copy of {k}"
                            )
                        ema[k] = state[flat]
                state.update(ema)
            self._state = state
        return self._state

    def state(self, component: str, config: Mapping[str, Any]) -> dict[str, np.ndarray]:
        prefix = LDM_PREFIXES[component]
        part = {k[len(prefix):]: v for k, v in self._all().items() if k.startswith(prefix)}
        if not part:
            raise ModelLoadError(
                f"component {component!r}: no {prefix}* weights in the single-file checkpoint "
                f"{self.path}"
            )
        return ldm_to_diffusers(part, component, config)


def _single_file_keys(path: str) -> list[str]:
    """Tensor names of a single-file checkpoint, cheaply where the format allows (header)."""
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(path, framework="numpy") as f:
                return list(f.keys())
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"cannot read safetensors file {path}: {e}") from e
    import zipfile

    if not zipfile.is_zipfile(path):
        raise ModelLoadError(
            f"{path} is not a PyTorch zip checkpoint nor safetensors (damaged or legacy file)"
        )
    return list(LDM_PREFIXES.values())  # a pickle's keys need a full read; checked on load


def _is_single_file(path: str) -> bool:
    return os.path.isfile(path) and path.lower().endswith(SINGLE_FILE_SUFFIXES)


def _check_config_folder(config_root: str) -> None:
    for name, fname in (("unet", "config.json"), ("vae", "config.json"),
                        ("text_encoder", "config.json"), ("scheduler", "scheduler_config.json")):
        if not os.path.isfile(os.path.join(config_root, name, fname)):
            raise ModelLoadError(
                f"config folder {config_root} lacks {name}/{fname} (a single-file checkpoint "
                "takes its component configs and tokenizer from a diffusers-format folder)"
            )
    if not os.path.isdir(os.path.join(config_root, "tokenizer")):
        raise ModelLoadError(f"config folder {config_root} lacks tokenizer/")


def weight_files(
    path_or_id: str | os.PathLike,
    variant: str | None = None,
    *,
    weights: str = "auto",
    config: str | os.PathLike | None = None,
) -> list[Path]:
    """The weight files :func:`load_sd` would read, checked cheaply (no tensor is read).

    For a diffusers-format folder (or cached hub id): each component's weights file, or a shard
    index and its shards, honouring ``weights`` and ``variant``; for a single-file checkpoint
    the file itself (its component configs come from ``config``). Raises
    :class:`ModelLoadError` in well under a second for a missing path, component, file,
    variant or config, so :func:`load_sd` fails before any model is built.
    """
    if weights not in ("auto", "flax", "pytorch"):
        raise ModelLoadError(f"weights must be 'auto', 'flax' or 'pytorch', got {weights!r}")
    if variant is not None and (not variant or not str(variant).replace("_", "").isalnum()):
        raise ModelLoadError(f"variant must be a plain name such as 'fp16' or 'ema', "
                             f"got {variant!r}")
    path = os.fspath(path_or_id)
    if _is_single_file(path):
        if variant not in (None, "ema"):
            raise ModelLoadError(
                f"variant {variant!r} has no meaning for the single-file checkpoint {path} "
                "(only 'ema', for its model_ema weights)"
            )
        if not config:
            raise ModelLoadError(
                f"{path} is a single-file checkpoint: give config= (model.config), a "
                "diffusers-format folder or cached hub id with its component configs and tokenizer"
            )
        config_root = resolve_model_path(config)
        _check_config_folder(config_root)
        if os.path.isdir(os.path.join(config_root, "image_encoder")):
            raise ModelLoadError(
                f"config {config_root} is an unCLIP model: single-file unCLIP checkpoints are "
                "not supported (use its diffusers-format folder)"
            )
        keys = _single_file_keys(path)
        if not any(k.startswith(LDM_PREFIXES["unet"]) for k in keys):
            raise ModelLoadError(
                f"{path} is not a Stable Diffusion single-file checkpoint (no "
                f"{LDM_PREFIXES['unet']}* weights)"
            )
        if variant == "ema" and path.endswith(".safetensors") and not any(
            k.startswith("model_ema.") for k in keys
        ):
            raise ModelLoadError(f"variant 'ema': {path} holds no model_ema.* weights")
        return [Path(path)]
    if os.path.isfile(path):
        raise ModelLoadError(
            f"model path {path!r} is a file but not a checkpoint "
            f"({'/'.join(SINGLE_FILE_SUFFIXES)}); expected a diffusers-format directory"
        )
    root = resolve_model_path(path)
    index_path = os.path.join(root, "model_index.json")
    index = _read_json(index_path, "model_index") if os.path.isfile(index_path) else {}
    components = [("unet", _DIFFUSERS_FILES), ("vae", _DIFFUSERS_FILES),
                  ("text_encoder", _TRANSFORMERS_FILES)]
    if (index.get("image_encoder") or [None])[0]:
        components.append(("image_encoder", _TRANSFORMERS_FILES))
    out: list[Path] = []
    for name, files in components:
        folder = os.path.join(root, name)
        _read_json(os.path.join(folder, "config.json"), name)
        _, wpath = _weights_file(folder, files, weights, name, variant)
        for f in _source_files(wpath):
            if not os.path.isfile(f):
                raise ModelLoadError(f"component {name!r}: missing shard {f}")
            out.append(Path(f))
    return out


# ------------------------------------------------------------------------- main entry


def load_sd(
    path_or_id: str | os.PathLike,
    *,
    dtype: Any = jnp.float32,
    weights: str = "auto",
    kind: str | None = None,
    variant: str | None = None,
    config: str | os.PathLike | None = None,
) -> tuple[SDComponents, dict]:
    """Load a Stable Diffusion model: ``(components, params)``.

    Args:
      path_or_id: diffusers-format directory, a hub id present in the local cache, or a
        single-file SD-1.x/2.x checkpoint in the original LDM layout (``.safetensors`` /
        ``.ckpt``; its configs and tokenizer come from ``config``).
      dtype: ``float32`` or ``bfloat16`` (compute dtype of the modules; parameters are cast).
      weights: ``'auto'`` (Flax msgpack if present, else PyTorch safetensors), ``'flax'`` or
        ``'pytorch'`` (safetensors, else a ``.bin`` pickle loaded without running its code).
      kind: expected kind (``'txt2img'``, ``'ip2p'``, ``'unclip'``); ``None`` infers it from
        ``model_index.json`` and the UNet config. A mismatch raises.
      variant: weights variant, e.g. ``'fp16'`` (``diffusion_pytorch_model.fp16.safetensors``)
        or ``'ema'``; weights are cast to ``dtype``. For a single file only ``'ema'`` (its
        ``model_ema.*`` UNet weights).
      config: for a single-file checkpoint, a diffusers-format folder (or cached hub id) giving
        the component configs, tokenizer and schedulers (its weights are not read).

    Raises:
      ModelLoadError: naming the missing / malformed / incompatible component; a missing
        path, file, variant or config fails first, before any model is built
        (:func:`weight_files`).
    """
    files = weight_files(path_or_id, variant, weights=weights, config=config)
    dtype = jnp.dtype(dtype)
    if dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
        raise ModelLoadError(f"dtype must be float32 or bfloat16, got {dtype}")
    from diffusers import FlaxAutoencoderKL, FlaxUNet2DConditionModel
    from diffusers.models.embeddings_flax import FlaxTimestepEmbedding
    from transformers import (
        CLIPTextConfig,
        CLIPTokenizer,
        CLIPVisionConfig,
        FlaxCLIPTextModel,
        FlaxCLIPVisionModel,
    )

    single = None
    if _is_single_file(os.fspath(path_or_id)):
        single = _SingleFile(os.fspath(path_or_id), variant)
        root = resolve_model_path(config)
    else:
        root = resolve_model_path(path_or_id)
    index_path = os.path.join(root, "model_index.json")
    model_index = _read_json(index_path, "model_index") if os.path.isfile(index_path) else {}
    pipeline_class = str(model_index.get("_class_name", ""))

    cache_log: dict[str, str] = {}
    unet, unet_params, unet_config, class_params = _load_diffusers_component(
        root, "unet", FlaxUNet2DConditionModel, weights, dtype, cache_log, variant, single
    )
    vae, vae_params, vae_config, _ = _load_diffusers_component(
        root, "vae", FlaxAutoencoderKL, weights, dtype, cache_log, variant, single
    )
    text_model, text_params, text_fmt = _load_transformers_component(
        root, "text_encoder", CLIPTextConfig, FlaxCLIPTextModel, weights, dtype, vision=False,
        cache_log=cache_log, variant=variant, single=single,
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
            variant=variant,
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
        "tiny_random": single is None
        and (os.path.isfile(os.path.join(root, TINY_MARKER))
             or bool(model_index.get("augdiff_tiny_random", False))),
        "dtype": str(dtype),
        "weights_cache": cache_log,
        "variant": variant,
        "config": os.fspath(config) if single is not None else None,
        "weight_files": [os.fspath(f) for f in files],
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
