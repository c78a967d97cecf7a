"""The SD UNet's attention through ``jax.nn.dot_product_attention``, diffusers' UNet unforked.

Every attention layer of diffusers' Flax UNet (``FlaxAttention``: self-attention and the
cross-attention to the text tokens) computes softmax(q kᵀ · d⁻½) v over its heads
(Vaswani et al. 2017, eq. 1) with explicit einsums, or with a chunked "memory-efficient"
loop. :func:`intercept` replaces only that computation: under ``nn.intercept_methods`` the
call of a ``FlaxAttention`` module runs the module's own projections (``to_q``, ``to_k``,
``to_v``, ``to_out_0``: same parameters, same names), and the attention itself as
``jax.nn.dot_product_attention(q, k, v, scale=d⁻½, implementation=...)`` on [B, T, heads, d]:
on a GPU that is cuDNN's fused flash attention (bf16/fp16 inputs, fp32 softmax statistics
and accumulation inside the kernel), on the CPU XLA's own. On a TPU the self-attention layers
run JAX's Pallas flash-attention kernel (``jax.experimental.pallas.ops.tpu.flash_attention``,
Dao et al. 2022: softmax over key blocks with running max and sum, never materialising the
T×T scores): XLA's own attention keeps every T×T score matrix in HBM, 4 GiB per chip for
SD-1.5 at 512² with 4 images per chip (``augdiff compile``). Every other line of the UNet is
diffusers' code; checkpoints are unchanged.

Implementations (``AUGDIFF_SD_ATTENTION`` or :func:`use`):

- ``'auto'`` (default): on a GPU ``jax.nn.dot_product_attention`` with
  ``implementation='cudnn'`` for fp16/bf16 inputs, falling back to ``'xla'`` for a layer
  cuDNN refuses at trace time (e.g. a head width it does not support; JAX's own
  ``implementation=None`` is XLA's always); on a TPU ``'pallas'``; on the CPU
  diffusers' einsums, because XLA's CPU ``dot_product_attention`` measured up to 3× slower
  than them at 64² latents (4,096 tokens; ``benchmarks/cpu_rows.py``);
- ``'xla'`` / ``'cudnn'``: that ``implementation`` of ``jax.nn.dot_product_attention``;
- ``'pallas'``: the Pallas TPU flash-attention kernel for self-attention whose length is a
  multiple of 128 (its block size), ``'xla'`` for the other layers (the cross-attention to
  77 text tokens, whose T×77 scores are small); on a CPU it runs in Pallas' TPU interpret
  mode (tests);
- ``'diffusers'``: diffusers' own einsum path, untouched (no interception).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from augdiff import distributed

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "pallas", "diffusers")
FLASH_BLOCK = 128  # the Pallas kernel's block (and lane) size
_override: list[str] = []


def implementation() -> str:
    """The attention implementation in force (:func:`use`, else ``AUGDIFF_SD_ATTENTION``)."""
    impl = _override[-1] if _override else os.environ.get("AUGDIFF_SD_ATTENTION", "auto")
    if impl not in IMPLEMENTATIONS:
        raise ValueError(
            f"AUGDIFF_SD_ATTENTION={impl!r}: choose one of {', '.join(IMPLEMENTATIONS)}"
        )
    return impl


@contextlib.contextmanager
def use(impl: str) -> Iterator[None]:
    """Trace the UNet calls inside the block with attention implementation ``impl``."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {impl!r}: choose one of {IMPLEMENTATIONS}")
    _override.append(impl)
    try:
        yield
    finally:
        _override.pop()


def flash_eligible(q: jax.Array, k: jax.Array) -> bool:
    """The Pallas kernel takes self-attention-shaped layers: as many keys as queries, a
    multiple of its block size."""
    return q.shape[1] == k.shape[1] and q.shape[1] % FLASH_BLOCK == 0


def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, scale: float) -> jax.Array:
    """softmax(q kᵀ · scale) v on ``[B, T, heads, d]`` by the Pallas TPU flash-attention kernel,
    each device on its own rows of the batch (:func:`augdiff.distributed.per_shard`: XLA cannot
    partition a Mosaic kernel itself).

    The kernel takes ``[B, heads, T, d]`` with ``d`` ≤ 128 or a multiple of 128; a wider
    head is zero-padded to the next multiple (zeros add nothing to q·k, and the padded output
    columns are cut), so SD-1.5's 160-wide heads run too."""
    from jax.experimental.pallas.ops.tpu import flash_attention as pallas_flash

    d = q.shape[-1]
    width = d if d <= FLASH_BLOCK else -(-d // FLASH_BLOCK) * FLASH_BLOCK
    pad = [(0, 0), (0, 0), (0, 0), (0, width - d)]
    q, k, v = (jnp.pad(jnp.swapaxes(a, 1, 2), pad) for a in (q, k, v))
    out = distributed.per_shard(
        lambda q, k, v: pallas_flash.flash_attention(q, k, v, sm_scale=float(scale)), q, k, v)
    return jnp.swapaxes(out[..., :d], 1, 2)


def _attention(module: Any, hidden: jax.Array, context: jax.Array | None,
               deterministic: bool, impl: str) -> jax.Array:
    """``FlaxAttention.__call__`` with the attention as ``jax.nn.dot_product_attention``."""
    context = hidden if context is None else context
    b = hidden.shape[0]
    heads, d = int(module.heads), int(module.dim_head)
    q = module.query(hidden).reshape(b, -1, heads, d)
    k = module.key(context).reshape(b, -1, heads, d)
    v = module.value(context).reshape(b, -1, heads, d)
    if impl == "auto" and distributed.target_platform() == "tpu":
        impl = "pallas"
    if impl == "pallas":
        out = (flash_attention(q, k, v, d**-0.5) if flash_eligible(q, k)
               else jax.nn.dot_product_attention(q, k, v, scale=d**-0.5, implementation="xla"))
    elif impl == "auto":
        out = None
        if distributed.target_platform() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16):
            try:
                out = jax.nn.dot_product_attention(q, k, v, scale=d**-0.5,
                                                   implementation="cudnn")
            except (NotImplementedError, ValueError, RuntimeError):
                out = None
        if out is None:
            out = jax.nn.dot_product_attention(q, k, v, scale=d**-0.5, implementation="xla")
    else:
        out = jax.nn.dot_product_attention(q, k, v, scale=d**-0.5, implementation=impl)
    out = module.proj_attn(out.reshape(b, -1, heads * d))
    return module.dropout_layer(out, deterministic=deterministic)


@contextlib.contextmanager
def intercept() -> Iterator[None]:
    """Route every ``FlaxAttention`` call inside the block per :func:`implementation`."""
    impl = implementation()
    if impl == "auto" and distributed.target_platform() == "cpu":
        impl = "diffusers"
    if impl == "diffusers":
        yield
        return
    from diffusers.models.attention_flax import FlaxAttention

    dpa_impl = impl

    def interceptor(next_fun: Any, args: Any, kwargs: Any, context: Any) -> Any:
        module = context.module
        if context.method_name != "__call__" or not isinstance(module, FlaxAttention):
            return next_fun(*args, **kwargs)
        hidden = args[0]
        ctx = args[1] if len(args) > 1 else kwargs.get("context")
        deterministic = args[2] if len(args) > 2 else kwargs.get("deterministic", True)
        return _attention(module, hidden, ctx, deterministic, dpa_impl)

    with nn.intercept_methods(interceptor):
        yield
