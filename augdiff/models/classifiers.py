"""Flax linen image classifiers: PreActResNet18, ResNet18/50, ResNeXt50 (32x4d) and a CPU preset.

All models take float NHWC images (``[-1, 1]`` by convention, see ``augdiff.data.augment``)
and return float32 logits. BatchNorm statistics live in the ``batch_stats`` collection:

    variables = model.init(key, x, train=False)
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    feats = model.apply(variables, x, train=False, method="features")   # penultimate

Architectures
- ResNet (He et al., 2016a, "Deep Residual Learning", Table 1): basic blocks (18/34) or
  bottleneck blocks (50+), post-activation ``conv-BN-ReLU``, projection shortcuts (1x1 conv +
  BN) where shape changes, stride on the 3x3 conv of a bottleneck (the "ResNet v1.5" layout of
  torchvision). With ``stem="imagenet"`` and width 64 the parameter counts equal torchvision's:
  ResNet18 11,689,512 and ResNet50 25,557,032 at 1000 classes.
- ResNeXt (Xie et al., 2017, Table 1): bottleneck with a grouped 3x3 conv of
  ``C = 32`` groups, inner width ``floor(planes * d / 64) * C`` with ``d = 4``; 25,028,904
  parameters at 1000 classes.
- PreActResNet18 (He et al., 2016b, "Identity Mappings", Fig. 4e): ``BN-ReLU-conv`` units and
  identity (or 1x1-conv) shortcuts, CIFAR stem (one 3x3 conv, stride 1, no pooling), global
  average pool and a linear head -- the widely used CIFAR variant (Kuang Liu's
  ``pytorch-cifar``, used by the label-scaling / synthetic-schedule recipes), which has no
  final BN-ReLU before pooling: 11,171,146 parameters at width 64 and 10 classes.

``width`` scales every stage (stage ``i`` has ``width * 2**i`` planes); the ``cifar`` stem is a
3x3 stride-1 conv and the ``imagenet`` stem a 7x7 stride-2 conv followed by 3x3 max-pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from augdiff.models.conv import Conv

# torchvision / He et al. (2015) initialisation: Kaiming normal, fan-out, for every conv.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

BN_MOMENTUM = 0.9  # flax convention (= 1 - torch momentum 0.1)
BN_EPSILON = 1e-5


def _bn(dtype: Any, name: str | None = None, scale_init=nn.initializers.ones) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=None,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=scale_init,
        name=name,
    )


def _conv(features: int, kernel: int, stride: int, dtype: Any, groups: int = 1,
          name: str | None = None) -> nn.Conv:
    return Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=[(kernel // 2, kernel // 2)] * 2,
        feature_group_count=groups,
        use_bias=False,
        kernel_init=conv_init,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )


class BasicBlock(nn.Module):
    """ResNet basic block: ``relu(BN(conv3x3(relu(BN(conv3x3(x))))) + shortcut(x))``."""

    planes: int
    stride: int = 1
    dtype: Any = jnp.float32
    groups: int = 1
    base_width: int = 64
    zero_init_residual: bool = False

    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        ura = not train
        y = _conv(self.planes, 3, self.stride, self.dtype, name="conv1")(x)
        y = nn.relu(_bn(self.dtype, "bn1")(y, use_running_average=ura))
        y = _conv(self.planes, 3, 1, self.dtype, name="conv2")(y)
        last_init = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
        y = _bn(self.dtype, "bn2", last_init)(y, use_running_average=ura)
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.planes:
            shortcut = _conv(self.planes, 1, self.stride, self.dtype, name="down_conv")(x)
            shortcut = _bn(self.dtype, "down_bn")(shortcut, use_running_average=ura)
        return nn.relu(y + shortcut)


class Bottleneck(nn.Module):
    """ResNet / ResNeXt bottleneck: 1x1 reduce, 3x3 (grouped for ResNeXt, carries the stride),
    1x1 expand by 4, post-activation; ``inner = floor(planes * base_width / 64) * groups``."""

    planes: int
    stride: int = 1
    dtype: Any = jnp.float32
    groups: int = 1
    base_width: int = 64
    zero_init_residual: bool = False

    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        ura = not train
        inner = int(self.planes * (self.base_width / 64.0)) * self.groups
        out_planes = self.planes * self.expansion
        y = _conv(inner, 1, 1, self.dtype, name="conv1")(x)
        y = nn.relu(_bn(self.dtype, "bn1")(y, use_running_average=ura))
        y = _conv(inner, 3, self.stride, self.dtype, groups=self.groups, name="conv2")(y)
        y = nn.relu(_bn(self.dtype, "bn2")(y, use_running_average=ura))
        y = _conv(out_planes, 1, 1, self.dtype, name="conv3")(y)
        last_init = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
        y = _bn(self.dtype, "bn3", last_init)(y, use_running_average=ura)
        shortcut = x
        if self.stride != 1 or x.shape[-1] != out_planes:
            shortcut = _conv(out_planes, 1, self.stride, self.dtype, name="down_conv")(x)
            shortcut = _bn(self.dtype, "down_bn")(shortcut, use_running_average=ura)
        return nn.relu(y + shortcut)


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al., 2016b, eq. 3 with ``f`` = identity):
    ``x_{l+1} = x_l + conv(relu(BN(conv(relu(BN(x_l))))))``; a 1x1 projection of
    ``relu(BN(x_l))`` replaces the identity where the shape changes."""

    planes: int
    stride: int = 1
    dtype: Any = jnp.float32
    groups: int = 1
    base_width: int = 64
    zero_init_residual: bool = False

    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        ura = not train
        a = nn.relu(_bn(self.dtype, "bn1")(x, use_running_average=ura))
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.planes:
            shortcut = _conv(self.planes, 1, self.stride, self.dtype, name="down_conv")(a)
        y = _conv(self.planes, 3, self.stride, self.dtype, name="conv1")(a)
        y = nn.relu(_bn(self.dtype, "bn2")(y, use_running_average=ura))
        y = _conv(self.planes, 3, 1, self.dtype, name="conv2")(y)
        return y + shortcut


BLOCKS: dict[str, type[nn.Module]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
    "preact": PreActBlock,
}


class ResNet(nn.Module):
    """A residual network: stem, four stages of ``stage_sizes`` blocks, global average pool,
    linear head. ``features`` returns the pooled penultimate activations (float32)."""

    stage_sizes: Sequence[int]
    block: str
    num_classes: int
    width: int = 64
    stem: str = "cifar"
    groups: int = 1
    base_width: int = 64
    dtype: Any = jnp.float32
    zero_init_residual: bool = False

    def setup(self) -> None:
        if self.block not in BLOCKS:
            raise ValueError(f"unknown block {self.block!r}; choose from {sorted(BLOCKS)}")
        if self.stem not in ("cifar", "imagenet"):
            raise ValueError(f"unknown stem {self.stem!r}; choose 'cifar' or 'imagenet'")
        if self.num_classes < 1 or self.width < 1:
            raise ValueError(
                f"num_classes ({self.num_classes}) and width ({self.width}) must be >= 1"
            )
        block_cls = BLOCKS[self.block]
        if self.stem == "cifar":
            self.stem_conv = _conv(self.width, 3, 1, self.dtype)
        else:
            self.stem_conv = _conv(self.width, 7, 2, self.dtype)
        # The pre-activation net normalises inside its blocks; the post-activation nets need a
        # BN-ReLU after the stem conv.
        self.stem_bn = None if self.block == "preact" else _bn(self.dtype)
        blocks = []
        for i, n in enumerate(self.stage_sizes):
            for j in range(n):
                blocks.append(
                    block_cls(
                        planes=self.width * 2**i,
                        stride=2 if (i > 0 and j == 0) else 1,
                        dtype=self.dtype,
                        groups=self.groups,
                        base_width=self.base_width,
                        zero_init_residual=self.zero_init_residual,
                        name=f"stage{i + 1}_block{j + 1}",
                    )
                )
        self.blocks = blocks
        self.head = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32)

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Penultimate features ``[N, width * 2**(stages-1) * expansion]`` (float32)."""
        if x.ndim != 4:
            raise ValueError(f"expected NHWC images, got shape {x.shape}")
        x = x.astype(self.dtype)
        x = self.stem_conv(x)
        if self.stem_bn is not None:
            x = nn.relu(self.stem_bn(x, use_running_average=not train))
        if self.stem == "imagenet":
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for blk in self.blocks:
            x = blk(x, train)
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.head(self.features(x, train).astype(self.dtype)).astype(jnp.float32)


# name -> (stage_sizes, block, default stem, groups, base_width)
ARCHS: dict[str, dict[str, Any]] = {
    "preact_resnet18": dict(stage_sizes=(2, 2, 2, 2), block="preact", stem="cifar"),
    "preact_resnet_tiny": dict(stage_sizes=(1, 1, 1, 1), block="preact", stem="cifar"),
    "resnet18": dict(stage_sizes=(2, 2, 2, 2), block="basic", stem="cifar"),
    "resnet50": dict(stage_sizes=(3, 4, 6, 3), block="bottleneck", stem="cifar"),
    "resnext50_32x4d": dict(
        stage_sizes=(3, 4, 6, 3), block="bottleneck", stem="cifar", groups=32, base_width=4
    ),
}

#: default width of the tiny CPU preset when the caller leaves ``width`` at 64
TINY_WIDTH = 16


def get_classifier(
    name: str,
    num_classes: int,
    width: int = 64,
    dtype: Any = jnp.float32,
    stem: str | None = None,
    **overrides: Any,
) -> ResNet:
    """Build a classifier by name: ``preact_resnet18``, ``preact_resnet_tiny`` (one block per
    stage, width 16 unless ``width`` is given otherwise), ``resnet18``, ``resnet50`` and
    ``resnext50_32x4d``.

    ``stem`` defaults to ``"cifar"`` (3x3 stride 1); pass ``"imagenet"`` for the 7x7/2 conv +
    max-pool stem of the ImageNet models. ``dtype`` is the compute dtype (params stay float32).
    """
    if name not in ARCHS:
        raise ValueError(f"unknown classifier {name!r}; choose from {sorted(ARCHS)}")
    if isinstance(dtype, str):
        dtype = jnp.dtype(dtype)
    kwargs = dict(ARCHS[name])
    if name == "preact_resnet_tiny" and width == 64:
        width = TINY_WIDTH
    if stem is not None:
        kwargs["stem"] = stem
    kwargs.update(overrides)
    return ResNet(num_classes=int(num_classes), width=int(width), dtype=dtype, **kwargs)


def param_count(tree: Any) -> int:
    """Number of scalars in a pytree of arrays or ``ShapeDtypeStruct`` s."""
    return int(sum(int(x.size) for x in jax.tree_util.tree_leaves(tree)))


def abstract_variables(model: nn.Module, image_size: int, channels: int = 3) -> Any:
    """``jax.eval_shape`` of ``model.init``: shapes/dtypes of every variable, no FLOPs spent."""
    x = jax.ShapeDtypeStruct((1, image_size, image_size, channels), jnp.float32)
    return jax.eval_shape(lambda k, x: model.init(k, x, train=False), jax.random.key(0), x)
