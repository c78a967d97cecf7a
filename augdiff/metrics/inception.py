"""The FID Inception-v3 (pool3, 2048-d) in Flax, and loading of its standard weights.

This is the network of pytorch-fid's ``fid_inception_v3`` — torchvision's Inception-v3 layout
(Szegedy et al. 2016) with the patches that reproduce the TensorFlow graph behind FID
(``inception-2015-12-05``):

- ``Mixed_5b/5c/5d`` (FIDInceptionA), ``Mixed_6b..6e`` (FIDInceptionC) and ``Mixed_7b``
  (FIDInceptionE_1): the pooling branch averages without counting the zero padding
  (``count_include_pad=False``);
- ``Mixed_7c`` (FIDInceptionE_2): the pooling branch is a 3×3 *max* pool;
- every conv is ``BasicConv2d`` = conv (no bias) → BatchNorm(ε = 0.001) → ReLU.

Inputs are uint8 NHWC images; they are scaled to [0, 1], resized to 299×299 bilinearly
(half-pixel centres, no antialiasing: PyTorch's ``F.interpolate(..., align_corners=False)``)
and mapped to [-1, 1] by 2x − 1. The output is the final global average pool, [B, 2048].

Weights: the standard PyTorch state dict ``pt_inception-2015-12-05-6726825d.pth`` (read with
torch when it is installed) or an ``.npz`` of the same keys (:func:`convert_pth_to_npz` writes
one on a machine with torch). Flax parameter names mirror the PyTorch module names, so
``Mixed_6b.branch7x7_2.conv.weight`` becomes ``params/Mixed_6b/branch7x7_2/conv/kernel``. A
missing file, a missing or extra key or a wrong shape is an error naming it — never a silent
fallback to random weights.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

RESIZE = 299
FEATURE_DIM = 2048
BN_EPS = 1e-3
WEIGHTS_HINT = (
    "pt_inception-2015-12-05-6726825d.pth, the FID Inception weights of pytorch-fid "
    "(https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth), or an .npz made from it with "
    "augdiff.metrics.inception.convert_pth_to_npz"
)


class BasicConv2d(nn.Module):
    """conv (no bias) → BatchNorm(ε=1e-3, running statistics) → ReLU."""

    features: int
    kernel: tuple[int, int]
    stride: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ph, pw = self.padding
        x = nn.Conv(self.features, self.kernel, strides=(self.stride, self.stride),
                    padding=((ph, ph), (pw, pw)), use_bias=False, name="conv",
                    precision=jax.lax.Precision.HIGHEST)(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
    """3×3 stride-1 average pool that ignores the zero padding (TF semantics)."""
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                       count_include_pad=False)


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nn.Module):
    """FIDInceptionA (Mixed_5b..5d)."""

    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv2d(64, (1, 1), name="branch1x1")(x)
        b5 = BasicConv2d(48, (1, 1), name="branch5x5_1")(x)
        b5 = BasicConv2d(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = BasicConv2d(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Mixed_6a: grid reduction 35 → 17."""

    @nn.compact
    def __call__(self, x):
        b3 = BasicConv2d(384, (3, 3), stride=2, name="branch3x3")(x)
        bd = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = BasicConv2d(96, (3, 3), stride=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
    """FIDInceptionC (Mixed_6b..6e) with factorised 1×7 / 7×1 convolutions."""

    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        b1 = BasicConv2d(192, (1, 1), name="branch1x1")(x)
        b7 = BasicConv2d(c7, (1, 1), name="branch7x7_1")(x)
        b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv2d(c7, (1, 1), name="branch7x7dbl_1")(x)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv2d(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """Mixed_7a: grid reduction 17 → 8."""

    @nn.compact
    def __call__(self, x):
        b3 = BasicConv2d(192, (1, 1), name="branch3x3_1")(x)
        b3 = BasicConv2d(320, (3, 3), stride=2, name="branch3x3_2")(b3)
        b7 = BasicConv2d(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv2d(192, (3, 3), stride=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
    """FIDInceptionE_1 (Mixed_7b, average pool) / FIDInceptionE_2 (Mixed_7c, max pool)."""

    max_pool: bool = False

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv2d(320, (1, 1), name="branch1x1")(x)
        b3 = BasicConv2d(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate([
            BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
            BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
        ], axis=-1)
        bd = BasicConv2d(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv2d(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([
            BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
            BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
        ], axis=-1)
        if self.max_pool:
            pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        else:
            pooled = _avg_pool_3x3(x)
        bp = BasicConv2d(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def resize_bilinear(x: jax.Array, size: int) -> jax.Array:
    """Bilinear resize of NHWC ``x`` to size×size, matching PyTorch ``align_corners=False``
    (half-pixel centres, edge clamping, no antialiasing when shrinking)."""
    b, h, w, c = x.shape
    if (h, w) == (size, size):
        return x
    scale = jnp.array([size / h, size / w], jnp.float32)
    return jax.image.scale_and_translate(
        x, (b, size, size, c), (1, 2), scale, jnp.zeros(2, jnp.float32),
        method="linear", antialias=False,
    )


class FIDInceptionV3(nn.Module):
    """pool3 features of the FID Inception-v3 for uint8 (or [0, 1] float) NHWC images."""

    resize_input: bool = True

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        x = images.astype(jnp.float32)
        if jnp.issubdtype(images.dtype, jnp.integer):
            x = x / 255.0
        if self.resize_input:
            x = resize_bilinear(x, RESIZE)
        x = 2.0 * x - 1.0
        x = BasicConv2d(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv2d(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv2d(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = BasicConv2d(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = BasicConv2d(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        x = InceptionC(128, name="Mixed_6b")(x)
        x = InceptionC(160, name="Mixed_6c")(x)
        x = InceptionC(160, name="Mixed_6d")(x)
        x = InceptionC(192, name="Mixed_6e")(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE(max_pool=False, name="Mixed_7b")(x)
        x = InceptionE(max_pool=True, name="Mixed_7c")(x)
        return jnp.mean(x, axis=(1, 2))


def abstract_variables(model: FIDInceptionV3 | None = None) -> Any:
    """Shapes/dtypes of the model's variables (``jax.eval_shape``; no compute)."""
    model = model or FIDInceptionV3()
    x = jax.ShapeDtypeStruct((1, RESIZE, RESIZE, 3), jnp.uint8)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape, x.dtype)))


# ---------------------------------------------------------------------------------------------
# PyTorch state dict <-> Flax variables

# (collection, flax leaf) for each PyTorch leaf of a BasicConv2d.
_LEAF_MAP = {
    ("conv", "weight"): ("params", "kernel"),
    ("bn", "weight"): ("params", "scale"),
    ("bn", "bias"): ("params", "bias"),
    ("bn", "running_mean"): ("batch_stats", "mean"),
    ("bn", "running_var"): ("batch_stats", "var"),
}
_IGNORED_SUFFIXES = ("num_batches_tracked",)
_IGNORED_PREFIXES = ("fc.",)  # the 1008-way logits, unused by FID


def _torch_key(path: tuple[str, ...], collection: str) -> str:
    *mods, layer, leaf = path
    inv = {v: k for k, v in _LEAF_MAP.items()}
    tlayer, tleaf = inv[(collection, leaf)]
    assert tlayer == layer, (path, collection)
    return ".".join([*mods, tlayer, tleaf])


def _flat(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def _to_torch_layout(leaf: str, a: Any) -> Any:
    """HWIO -> OIHW for conv kernels; abstract leaves (``ShapeDtypeStruct``) stay abstract."""
    if isinstance(a, jax.ShapeDtypeStruct):
        shape = tuple(a.shape[i] for i in (3, 2, 0, 1)) if leaf == "kernel" else a.shape
        return jax.ShapeDtypeStruct(shape, a.dtype)
    a = np.asarray(a)
    return np.transpose(a, (3, 2, 0, 1)) if leaf == "kernel" else a


def _from_torch_layout(leaf: str, a: np.ndarray) -> np.ndarray:
    return np.transpose(a, (2, 3, 1, 0)) if leaf == "kernel" else a  # OIHW -> HWIO


def state_dict_from_variables(variables: Mapping[str, Any]) -> dict[str, Any]:
    """Flax variables → a PyTorch-layout state dict (keys as in pytorch-fid's FID Inception).

    Abstract variables (from :func:`abstract_variables`) give abstract entries (shapes only).
    """
    out: dict[str, np.ndarray] = {}
    for collection in ("params", "batch_stats"):
        for path, leaf in _flat(variables[collection]).items():
            out[_torch_key(path, collection)] = _to_torch_layout(path[-1], leaf)
    return out


def variables_from_state_dict(state_dict: Mapping[str, Any], source: str = "state dict") -> Any:
    """A PyTorch FID-Inception state dict → Flax variables, checking every key and shape.

    ``fc.*`` (the logits) and ``*.num_batches_tracked`` entries are ignored; any other missing,
    extra or misshapen entry raises ``ValueError`` naming it.
    """
    abstract = abstract_variables()
    sd = {
        k: v for k, v in state_dict.items()
        if not k.startswith(_IGNORED_PREFIXES) and not k.endswith(_IGNORED_SUFFIXES)
    }
    expected: dict[str, tuple[str, tuple[str, ...], tuple[int, ...]]] = {}
    for collection in ("params", "batch_stats"):
        for path, leaf in _flat(abstract[collection]).items():
            expected[_torch_key(path, collection)] = (collection, path, tuple(leaf.shape))
    missing = sorted(set(expected) - set(sd))
    extra = sorted(set(sd) - set(expected))
    if missing or extra:
        raise ValueError(
            f"inception weights {source}: not the FID Inception-v3 state dict "
            f"({len(missing)} missing keys, e.g. {missing[:3]}; {len(extra)} unexpected keys, "
            f"e.g. {extra[:3]}); expected {WEIGHTS_HINT}"
        )
    tree: dict[str, Any] = {"params": {}, "batch_stats": {}}
    for key, (collection, path, shape) in expected.items():
        value = np.asarray(sd[key], dtype=np.float32)
        value = _from_torch_layout(path[-1], value)
        if tuple(value.shape) != shape:
            raise ValueError(
                f"inception weights {source}: {key} has shape {tuple(np.asarray(sd[key]).shape)}, "
                "expected the FID Inception-v3 shape "
                f"{_to_torch_layout(path[-1], jax.ShapeDtypeStruct(shape, jnp.float32)).shape}"
            )
        node = tree[collection]
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = jnp.asarray(value)
    return tree


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ``.pth`` (needs torch) or ``.npz`` state dict into numpy arrays."""
    path = os.fspath(path)
    if not path:
        raise FileNotFoundError(f"inception weights: no file given; provide {WEIGHTS_HINT}")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"inception weights: file {path!r} not found; provide {WEIGHTS_HINT}")
    if path.endswith(".npz"):
        with np.load(path) as z:
            return {k: np.asarray(z[k]) for k in z.files}
    if path.endswith((".pth", ".pt", ".bin")):
        try:
            import torch
        except ImportError as e:
            raise ImportError(
                f"inception weights: reading {path!r} needs torch (pip install 'augdiff[torch]'); "
                "or convert it to .npz with augdiff.metrics.inception.convert_pth_to_npz on a "
                "machine that has torch"
            ) from e
        sd = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(sd, Mapping):
            raise ValueError(f"inception weights: {path!r} does not hold a state dict")
        return {k: v.detach().cpu().numpy() for k, v in sd.items()}
    raise ValueError(f"inception weights: unknown file type {path!r} (want .pth or .npz)")


def load_variables(path: str | os.PathLike) -> Any:
    """Load the FID Inception weights from a local ``.pth`` / ``.npz`` file into Flax variables."""
    return variables_from_state_dict(read_state_dict(path), source=repr(os.fspath(path)))


def convert_pth_to_npz(pth_path: str | os.PathLike, npz_path: str | os.PathLike) -> None:
    """Convert the PyTorch FID Inception state dict to an ``.npz`` readable without torch."""
    sd = read_state_dict(pth_path)
    variables_from_state_dict(sd, source=repr(os.fspath(pth_path)))  # validate before writing
    np.savez(npz_path, **sd)


def param_count(variables: Any) -> int:
    """Number of trainable parameters (``params`` collection; BN statistics excluded)."""
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(variables["params"])))
