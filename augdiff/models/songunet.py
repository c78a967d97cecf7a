"""DDPM++ (``SongUNet`` of NVlabs/edm) in Flax linen, with CASD source conditioning.

The architecture follows ``training/networks.py::SongUNet`` of NVlabs/edm with the DDPM++
settings of EDM (Karras et al. 2022, App. F.2; Song et al. 2021): positional noise embedding
(``endpoint=True``), two SiLU mapping layers to ``channel_mult_emb·model_channels``, 'standard'
encoder/decoder, residual ``UNetBlock`` (GroupNorm with ≤32 groups and eps 1e-6, 3×3 convs,
dropout, skip scale √½, additive (non-adaptive) embedding, 1×1 resampled projection skip),
box resample filter ``[1, 1]``, one-head self-attention at ``attn_resolutions`` plus at the
bottleneck, Xavier-uniform init with the output convs scaled by 1e-5 and qkv by √0.2.
Parameter counts match the reference module for module (e.g. 55,733,891 for the CIFAR-10
preset, which like EDM's training config has a 9-d augmentation-label input).

CASD (seed 004, §3.2 and App. A.2) adds nothing to the network: ``s_θ(x, y, t) =
f_θ3(R_θ1(x), e_θ2(y))`` where R is the DDPM++ input conv (3×3, 3 → 128, ``enc_*_conv``) and e
is EDM's label path: the source label ``y`` (0 = real, 1..K = synthetic sources) one-hot,
scaled by √(in_features) and mapped to 128-d by ``map_label`` (added to the noise embedding),
then the two SiLU mapping layers to 512-d shared with the noise embedding. With
``casd=True`` the network is EDM's conditional SongUNet with ``label_dim = num_sources`` (plus
``label_dim`` class entries when also class-conditional), so DM, SDA and CASD networks differ
only in ``map_label`` (``(num_sources + 1)·128`` parameters).

Images are NHWC. ``dtype`` is the compute dtype (e.g. bfloat16); parameters, GroupNorm and the
attention softmax stay in float32 and the output is float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from augdiff.models import conv as conv_lib

Array = jax.Array
Dtype = Any

PRESETS: dict[str, dict[str, Any]] = {
    # EDM's CIFAR-10 DDPM++ (train.py --arch=ddpmpp, augment_dim=9 as in its training config).
    "cifar10": dict(
        img_resolution=32, model_channels=128, channel_mult=(2, 2, 2), num_blocks=4,
        attn_resolutions=(16,), dropout=0.13, augment_dim=9,
    ),
    # EDM's FFHQ/AFHQ 64x64 DDPM++ (--cres=1,2,2,2 --dropout=0.05).
    "ffhq64": dict(
        img_resolution=64, model_channels=128, channel_mult=(1, 2, 2, 2), num_blocks=4,
        attn_resolutions=(16,), dropout=0.05, augment_dim=9,
    ),
    # A small net for CPU tests and experiments (attention only at the 8x8 bottleneck).
    "tiny": dict(
        img_resolution=16, model_channels=32, channel_mult=(1, 2), num_blocks=1,
        attn_resolutions=(8,), dropout=0.0, augment_dim=0,
    ),
}


def songunet_config(name: str, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments of a :class:`SongUNet` preset (``'cifar10'``, ``'ffhq64'``, ``'tiny'``)
    with ``overrides`` applied; use as ``SongUNet(**songunet_config('cifar10', label_dim=10))``."""
    if name not in PRESETS:
        raise ValueError(
            f"songunet_config: unknown preset {name!r}; choose one of {sorted(PRESETS)}"
        )
    fields = {f.name for f in SongUNet.__dataclass_fields__.values()} - {"parent", "name"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"songunet_config: unknown SongUNet fields {unknown}")
    return {**PRESETS[name], **overrides}


def _xavier(scale: float = 1.0) -> nn.initializers.Initializer:
    """NVlabs/edm ``weight_init('xavier_uniform') * scale``: U(±scale·√(6/(fan_in + fan_out)))."""
    return nn.initializers.variance_scaling(scale**2, "fan_avg", "uniform")


INIT = _xavier(1.0)
INIT_ZERO = _xavier(1e-5)
INIT_ATTN = _xavier(math.sqrt(0.2))


def resample(x: Array, resample_filter: Sequence[float], *, up: bool = False,
             down: bool = False) -> Array:
    """2× up/down-sampling of NHWC ``x`` with the separable FIR ``f ⊗ f / (Σf)²``.

    Down: depthwise stride-2 convolution with padding ``(len(f)−1)//2``; up: its transpose with
    the filter scaled by 4 (NVlabs/edm ``Conv2d``). For the DDPM++ box filter ``[1, 1]`` these
    are exactly 2×2 average pooling and nearest-neighbour upsampling, used as fast paths.
    """
    if up == down:
        raise ValueError("resample: exactly one of up/down must be set")
    f = np.asarray(resample_filter, np.float32)
    if tuple(f.tolist()) == (1.0, 1.0):
        b, h, w, c = x.shape
        if down:
            return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    c = x.shape[-1]
    f2 = np.outer(f, f) / np.square(f.sum())
    pad = (len(f) - 1) // 2
    kernel = jnp.asarray(np.tile(f2[:, :, None, None], (1, 1, 1, c)), x.dtype)  # HWIO, depthwise
    dn = ("NHWC", "HWIO", "NHWC")
    if down:
        return jax.lax.conv_general_dilated(
            x, kernel, (2, 2), [(pad, pad)] * 2, dimension_numbers=dn, feature_group_count=c
        )
    k = len(f) - 1 - pad  # transposed conv = dilated input, padding k-1-p (filter symmetric)
    return jax.lax.conv_general_dilated(
        x, kernel[::-1, ::-1] * 4, (1, 1), [(k, k)] * 2, lhs_dilation=(2, 2),
        dimension_numbers=dn, feature_group_count=c,
    )


def dropout_barrier(h: Array, active: bool) -> Array:
    """``h`` (a dropout output) behind ``lax.optimization_barrier`` when ``active``; same values.

    Without it XLA:TPU fuses the dropout mask -- the threefry hash of every element, ~150
    integer ops -- into the consumer ``conv1``'s forward fusion and again into its
    weight-gradient fusion, where the convolution emitter inlines it into unrolled code. For
    the CIFAR-10 DDPM++ train step (55.7 M parameters, batch 128, bf16, EDM loss + Adam) on
    one v5e chip that is 5.9 M instead of 4.7 M program bundles and 2.4× the compile time
    (920 vs 380 CPU-seconds). Behind the barrier the mask is computed once, in an
    elementwise fusion, and the backward pass keeps the dropped activation (+0.8 GB of
    temporaries in that step; XLA's cycle estimate is unchanged). Barriering only the mask
    instead compiles slower and uses more memory. Inference (``train=False``) and
    ``dropout=0`` are untouched.
    """
    return jax.lax.optimization_barrier(h) if active else h


class GroupNorm(nn.Module):
    """GroupNorm with ``min(32, C // 4)`` groups, computed in float32 (NVlabs/edm)."""

    eps: float = 1e-6
    num_groups: int = 32
    min_channels_per_group: int = 4

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        groups = min(self.num_groups, c // self.min_channels_per_group)
        y = nn.GroupNorm(num_groups=groups, epsilon=self.eps, dtype=jnp.float32,
                         param_dtype=jnp.float32, name="gn")(x.astype(jnp.float32))
        return y.astype(x.dtype)


class Conv(nn.Module):
    """``k×k`` convolution (``k = 0``: none) after an optional 2× resample (edm ``Conv2d``)."""

    features: int
    kernel: int
    up: bool = False
    down: bool = False
    resample_filter: tuple[float, ...] = (1.0, 1.0)
    kernel_init: nn.initializers.Initializer = INIT
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.up or self.down:
            x = resample(x, self.resample_filter, up=self.up, down=self.down)
        if self.kernel:
            p = self.kernel // 2
            x = conv_lib.Conv(self.features, (self.kernel, self.kernel),
                              padding=[(p, p), (p, p)], kernel_init=self.kernel_init,
                              dtype=self.dtype, param_dtype=jnp.float32, name="conv")(x)
        return x


class UNetBlock(nn.Module):
    """Residual block of DDPM++ (NVlabs/edm ``UNetBlock`` with ``adaptive_scale=False``).

    ``h = conv0(SiLU(norm0(x)))``; ``h = SiLU(norm1(h + affine(emb)))``;
    ``x' = (conv1(dropout(h)) + skip(x))·skip_scale``; with attention
    ``x'' = (proj(attn(norm2(x'))) + x')·skip_scale``.
    """

    out_channels: int
    up: bool = False
    down: bool = False
    attention: bool = False
    num_heads: int | None = 1
    channels_per_head: int = 64
    dropout: float = 0.0
    skip_scale: float = math.sqrt(0.5)
    eps: float = 1e-6
    resample_filter: tuple[float, ...] = (1.0, 1.0)
    resample_proj: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, emb: Array, train: bool = False) -> Array:
        cin, cout = x.shape[-1], self.out_channels
        rs = dict(resample_filter=self.resample_filter, dtype=self.dtype)
        orig = x
        h = Conv(cout, 3, up=self.up, down=self.down, name="conv0", **rs)(
            nn.silu(GroupNorm(self.eps, name="norm0")(x))
        )
        params = nn.Dense(cout, kernel_init=INIT, dtype=self.dtype, param_dtype=jnp.float32,
                          name="affine")(emb)
        h = nn.silu(GroupNorm(self.eps, name="norm1")(h + params[:, None, None, :].astype(h.dtype)))
        h = dropout_barrier(nn.Dropout(self.dropout, deterministic=not train)(h),
                            train and self.dropout > 0)
        h = Conv(cout, 3, kernel_init=INIT_ZERO, name="conv1", **rs)(h)
        if cout != cin or self.up or self.down:
            k = 1 if self.resample_proj or cout != cin else 0
            orig = Conv(cout, k, up=self.up, down=self.down, name="skip", **rs)(orig)
        x = (h + orig) * self.skip_scale

        if self.attention:
            heads = self.num_heads if self.num_heads is not None else cout // self.channels_per_head
            b, hh, ww, _ = x.shape
            qkv = Conv(cout * 3, 1, kernel_init=INIT_ATTN, name="qkv", **rs)(
                GroupNorm(self.eps, name="norm2")(x)
            )
            # Channel layout (head, channel, q/k/v) as in the reference's reshape.
            qkv = qkv.reshape(b, hh * ww, heads, cout // heads, 3).astype(jnp.float32)
            q, k, v = qkv[..., 0], qkv[..., 1], qkv[..., 2]
            w = jax.nn.softmax(
                jnp.einsum("bqhc,bkhc->bhqk", q, k) / math.sqrt(cout // heads), axis=-1
            )
            a = jnp.einsum("bhqk,bkhc->bqhc", w, v).reshape(b, hh, ww, cout).astype(x.dtype)
            x = (Conv(cout, 1, kernel_init=INIT_ZERO, name="proj", **rs)(a) + x) * self.skip_scale
        return x


def positional_embedding(t: Array, num_channels: int, max_positions: int = 10000,
                         endpoint: bool = True) -> Array:
    """Sinusoidal embedding ``[sin(t·ω_j), cos(t·ω_j)]``, ``ω_j = (1/max_positions)^{j/(C/2−1)}``.

    NVlabs/edm builds ``[cos, sin]`` and then swaps the halves for DDPM++; this returns the
    swapped order directly.
    """
    half = num_channels // 2
    freqs = jnp.arange(half, dtype=jnp.float32) / (half - (1 if endpoint else 0))
    freqs = (1.0 / max_positions) ** freqs
    x = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(x), jnp.cos(x)], axis=1)


class SongUNet(nn.Module):
    """DDPM++ U-Net ``F_θ(x; c_noise, class, source)`` (NVlabs/edm ``SongUNet``), CASD-ready.

    ``__call__(x [B,H,W,C], noise_labels [B], class_labels=None, source_labels=None,
    train=False, augment_labels=None) -> [B,H,W,out_channels]`` float32. ``class_labels`` are
    int ``[B]`` or one-hot/soft ``[B, label_dim]`` (zeros = unconditional); ``source_labels``
    are int ``[B]`` in ``[0, num_sources)`` (CASD only; ``None`` means 0 = real). Dropout and
    label dropout draw from the ``'dropout'`` rng when ``train=True``.
    """

    img_resolution: int = 32
    in_channels: int = 3
    out_channels: int = 3
    label_dim: int = 0
    augment_dim: int = 0
    model_channels: int = 128
    channel_mult: Sequence[int] = (2, 2, 2)
    channel_mult_emb: int = 4
    num_blocks: int = 4
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.10
    label_dropout: float = 0.0
    resample_filter: Sequence[float] = (1.0, 1.0)
    num_heads: int = 1
    casd: bool = False
    num_sources: int = 2
    dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        # Sequences from configs (lists) become tuples so the module stays hashable for jit.
        for f in ("channel_mult", "attn_resolutions", "resample_filter"):
            object.__setattr__(self, f, tuple(getattr(self, f)))
        if not self.channel_mult:
            raise ValueError("SongUNet: channel_mult must name at least one resolution")
        if self.casd and self.num_sources < 1:
            raise ValueError(f"SongUNet: casd needs num_sources >= 1, got {self.num_sources}")
        super().__post_init__()

    def _check(self, x: Array, noise_labels: Array) -> None:
        want = (self.img_resolution, self.img_resolution, self.in_channels)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"SongUNet: expected x of shape [B, {want[0]}, {want[1]}, {want[2]}]"
                             f" (NHWC), got {tuple(x.shape)}")
        if noise_labels.shape != (x.shape[0],):
            raise ValueError(f"SongUNet: noise_labels must be [B]=[{x.shape[0]}], "
                             f"got {tuple(noise_labels.shape)}")
        if self.img_resolution % (2 ** (len(self.channel_mult) - 1)):
            raise ValueError(
                f"SongUNet: img_resolution {self.img_resolution} is not divisible by "
                f"2^{len(self.channel_mult) - 1} (channel_mult {self.channel_mult})"
            )

    def _embedding(self, noise_labels: Array, class_labels: Array | None,
                   source_labels: Array | None, augment_labels: Array | None,
                   batch: int, train: bool) -> Array:
        dense = dict(kernel_init=INIT, dtype=jnp.float32, param_dtype=jnp.float32)
        noise_ch = self.model_channels
        emb_ch = self.model_channels * self.channel_mult_emb
        emb = positional_embedding(noise_labels, noise_ch, endpoint=True)
        labels = []
        if self.label_dim:
            if class_labels is None:
                raise ValueError(f"SongUNet: label_dim={self.label_dim} needs class_labels")
            cl = jnp.asarray(class_labels)
            if cl.ndim == 1:
                cl = jax.nn.one_hot(cl, self.label_dim, dtype=jnp.float32)
            if cl.shape != (batch, self.label_dim):
                raise ValueError(f"SongUNet: class_labels must be int [B] or [B, {self.label_dim}],"
                                 f" got {tuple(jnp.shape(class_labels))}")
            labels.append(cl.astype(jnp.float32))
        if self.casd:  # e_θ2: the source label enters EDM's label path (App. A.2).
            y = (jnp.zeros((batch,), jnp.int32) if source_labels is None
                 else jnp.asarray(source_labels))
            if y.shape != (batch,):
                raise ValueError(f"SongUNet: source_labels must be int [B]=[{batch}], "
                                 f"got {tuple(y.shape)}")
            labels.append(jax.nn.one_hot(y, self.num_sources, dtype=jnp.float32))
        if labels:
            cl = jnp.concatenate(labels, axis=-1)
            if train and self.label_dropout:
                u = jax.random.uniform(self.make_rng("dropout"), (batch, 1))
                cl = cl * (u >= self.label_dropout).astype(cl.dtype)
            emb = emb + nn.Dense(noise_ch, name="map_label",
                                 **dense)(cl * np.sqrt(cl.shape[-1]))
        if self.augment_dim:
            aug = (jnp.zeros((batch, self.augment_dim), jnp.float32) if augment_labels is None
                   else jnp.asarray(augment_labels, jnp.float32))
            emb = emb + nn.Dense(noise_ch, use_bias=False, name="map_augment", **dense)(aug)
        emb = nn.silu(nn.Dense(emb_ch, name="map_layer0", **dense)(emb))
        emb = nn.silu(nn.Dense(emb_ch, name="map_layer1", **dense)(emb))
        return emb

    @nn.compact
    def __call__(self, x: Array, noise_labels: Array, class_labels: Array | None = None,
                 source_labels: Array | None = None, train: bool = False,
                 augment_labels: Array | None = None) -> Array:
        noise_labels = jnp.asarray(noise_labels, jnp.float32).reshape(-1)
        self._check(x, noise_labels)
        emb = self._embedding(noise_labels, class_labels, source_labels, augment_labels,
                              x.shape[0], train).astype(self.dtype)
        x = x.astype(self.dtype)
        mc, rf = self.model_channels, tuple(self.resample_filter)
        block = dict(num_heads=self.num_heads, dropout=self.dropout, resample_filter=rf,
                     dtype=self.dtype)
        # Encoder.
        skips = []
        cout = mc
        for level, mult in enumerate(self.channel_mult):
            res = self.img_resolution >> level
            if level == 0:
                x = Conv(mc, 3, name=f"enc_{res}x{res}_conv", dtype=self.dtype)(x)
            else:
                x = UNetBlock(cout, down=True, name=f"enc_{res}x{res}_down", **block)(x, emb, train)
            skips.append(x)
            for idx in range(self.num_blocks):
                cout = mc * mult
                x = UNetBlock(cout, attention=res in self.attn_resolutions,
                              name=f"enc_{res}x{res}_block{idx}", **block)(x, emb, train)
                skips.append(x)

        # Decoder.
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            res = self.img_resolution >> level
            if level == len(self.channel_mult) - 1:
                x = UNetBlock(cout, attention=True, name=f"dec_{res}x{res}_in0", **block)(x, emb,
                                                                                       train)
                x = UNetBlock(cout, name=f"dec_{res}x{res}_in1", **block)(x, emb, train)
            else:
                x = UNetBlock(cout, up=True, name=f"dec_{res}x{res}_up", **block)(x, emb, train)
            for idx in range(self.num_blocks + 1):
                x = jnp.concatenate([x, skips.pop()], axis=-1)
                cout = mc * mult
                attn = idx == self.num_blocks and res in self.attn_resolutions
                x = UNetBlock(cout, attention=attn, name=f"dec_{res}x{res}_block{idx}",
                              **block)(x, emb, train)
        x = nn.silu(GroupNorm(1e-6, name="dec_aux_norm")(x))
        x = Conv(self.out_channels, 3, kernel_init=INIT_ZERO, name="dec_aux_conv",
                 dtype=self.dtype)(x)
        return x.astype(jnp.float32)


_NORMS = ("norm0", "norm1", "norm2")
_CONVS = ("conv0", "conv1", "skip", "qkv", "proj")


def params_from_edm_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Flax ``params`` of :class:`SongUNet` from an NVlabs/edm ``SongUNet``/``EDMPrecond`` state
    dict (numpy or torch tensors), e.g. to load its pretrained DDPM++ checkpoints or to check
    parity with the reference. Convolutions OIHW → HWIO, linear ``[out, in]`` → ``[in, out]``;
    resample-filter buffers are dropped. A CASD net's ``map_label`` is the reference's
    ``map_label`` of a conditional net with ``label_dim = num_sources``.
    """
    params: dict[str, Any] = {}

    def put(path: list[str], value: np.ndarray) -> None:
        node = params
        for p in path[:-1]:
            node = node.setdefault(p, {})
        if path[-1] in node:
            raise ValueError(f"params_from_edm_state_dict: duplicate parameter {'/'.join(path)}")
        node[path[-1]] = value

    for key, tensor in state_dict.items():
        value = np.asarray(tensor.detach().cpu().numpy() if hasattr(tensor, "detach") else tensor,
                           np.float32)
        parts = key.removeprefix("model.").split(".")
        if parts[-1] == "resample_filter" or parts[-1] == "freqs":
            continue
        leaf = parts[-1]
        if parts[0] in ("enc", "dec"):
            top = "dec_aux_" + parts[1].split("_aux_")[1] if "_aux_" in parts[1] else (
                f"{parts[0]}_{parts[1]}")
            mod = [top] + parts[2:-1]
        elif parts[0].startswith("map_"):
            mod = parts[:-1]
        else:
            raise ValueError(f"params_from_edm_state_dict: unexpected key {key!r}")
        last = mod[-1]
        if last in _NORMS or last == "dec_aux_norm":
            put(mod + ["gn", "scale" if leaf == "weight" else "bias"], value)
        elif last in _CONVS or last.endswith("_conv"):
            put(mod + ["conv", "kernel" if leaf == "weight" else "bias"],
                value.transpose(2, 3, 1, 0) if leaf == "weight" else value)
        else:  # Linear: affine, map_label, map_augment, map_layer0/1
            put(mod + ["kernel" if leaf == "weight" else "bias"],
                value.T if leaf == "weight" else value)
    return params
