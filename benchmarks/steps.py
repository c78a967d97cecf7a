"""The jitted steps that the real-size benchmarks time and that the XLA floors are taken from.

Each builder returns a :class:`Step`: a jitted function of augdiff's own code path
(``augdiff.sd.pipelines`` / ``augdiff.methods.inversion`` / ``augdiff.edm`` /
``augdiff.train.classifier``), its arguments and how many calls make one unit of work
(``calls``: e.g. 50 CFG UNet steps for a DDIM-50 image batch). The arguments are real arrays
when ``params`` are, and ``jax.ShapeDtypeStruct`` when ``params`` are abstract (then
``step.fn.lower(*step.args)`` compiles without allocating anything): see :func:`floors`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass
class Step:
    name: str
    fn: Any  # a jax.jit-wrapped function
    args: tuple
    batch: int  # images per call
    calls: int = 1  # calls per unit of work (sampler steps)
    fixed_argnums: tuple = (0,)  # arguments that do not grow with the batch (weights, state)
    what: str = ""


def _abstract(tree: Any) -> bool:
    leaves = jax.tree_util.tree_leaves(tree)
    return bool(leaves) and isinstance(leaves[0], jax.ShapeDtypeStruct)


def _input(
    abstract: bool,
    shape: tuple,
    dtype: Any = jnp.float32,
    seed: int = 0,
    kind: str = "normal",
    high: int = 0,
) -> Any:
    if abstract:
        return jax.ShapeDtypeStruct(shape, dtype)
    rng = np.random.default_rng(seed)
    if kind == "int":
        return jnp.asarray(rng.integers(0, high, shape), dtype)
    if kind == "uniform":
        return jnp.asarray(rng.uniform(-1, 1, shape), dtype)
    return jnp.asarray(rng.standard_normal(shape), dtype)


def _only(params: dict, *names: str) -> dict:
    """The parameter sub-trees a step reads (so weights it never touches are not counted)."""
    return {k: v for k, v in params.items() if k in names}


def sd_cfg_step(comps: Any, params: dict, batch: int, latent: int, tokens: int = 77) -> Step:
    """One classifier-free-guided UNet call: the UNet on ``2 × batch`` rows ([uncond, cond]),
    ε̃ = ε_u + w (ε_c − ε_u), as one step of augdiff's sampler (``pipelines.unet_output`` +
    ``guidance``)."""
    from augdiff.sd import guidance, pipelines

    ab = _abstract(params)
    c = int(comps.unet.in_channels)
    d = int(comps.unet.cross_attention_dim)

    unclip = comps.kind == "unclip"
    branches = 3 if comps.kind == "ip2p" else 2

    @jax.jit
    def fn(params, x, t, cond, uncond, w, cls):
        ctx = [cond, uncond, uncond][:branches] if branches == 3 else [uncond, cond]
        cls_in = guidance.concat_branches(jnp.zeros_like(cls), cls) if unclip else None
        out = pipelines.unet_output(
            comps,
            params,
            guidance.repeat_branches(x, branches),
            t,
            guidance.concat_branches(*ctx),
            cls_in,
        )
        parts = guidance.split_branches(out, branches)
        return guidance.cfg(parts[-2], parts[-1], w.reshape(-1, 1, 1, 1))

    cls_dim = int(params["class_embedding"]["linear_1"]["kernel"].shape[0]) if unclip else 1
    args = (
        _only(params, "unet", "class_embedding"),
        _input(ab, (batch, c, latent, latent)),
        _input(ab, (), jnp.int32, kind="int", high=1000),
        _input(ab, (batch, tokens, d), seed=1),
        _input(ab, (batch, tokens, d), seed=2),
        _input(ab, (batch,), seed=3),
        _input(ab, (batch, cls_dim), seed=5),
    )
    return Step(
        f"unet-cfg-step-{latent}", fn, args, batch, what=f"UNet on {branches}×batch rows, guided"
    )


def vae_decode(comps: Any, params: dict, batch: int, latent: int) -> Step:
    from augdiff.sd import pipelines

    ab = _abstract(params)
    fn = jax.jit(lambda p, z: pipelines._decode(comps, p, z))
    return Step(
        f"vae-decode-{latent * comps.vae_scale_factor}",
        fn,
        (_only(params, "vae"), _input(ab, (batch, comps.latent_channels, latent, latent))),
        batch,
    )


def text_encode(comps: Any, params: dict, batch: int, tokens: int = 77, vocab: int = 49408) -> Step:
    from augdiff.sd import pipelines

    ab = _abstract(params)
    fn = jax.jit(lambda p, ids: pipelines._text_encode(comps, p, ids))
    return Step(
        "text-encode",
        fn,
        (
            _only(params, "text_encoder"),
            _input(ab, (batch, tokens), jnp.int32, kind="int", high=vocab),
        ),
        batch,
    )


def inversion_step(comps: Any, params: dict, batch: int, latent: int, tokens: int = 5) -> Step:
    """One Diffusion Inversion stage-1 step: forward + backward through the frozen UNet into
    the conditioning vectors, AdamW update (``augdiff.methods.inversion``'s own loop, one
    iteration)."""
    from augdiff.methods import inversion as inv

    ab = _abstract(params)
    d = int(comps.unet.cross_attention_dim)
    run = inv._train_fn(comps, 0.03, 1e-2, None)
    opt = inv.make_optimizer(0.03, 1e-2)
    cond = _input(ab, (batch, tokens, d), seed=4)
    opt_state = jax.eval_shape(opt.init, cond) if ab else opt.init(cond)
    if ab:
        keys = jax.ShapeDtypeStruct((batch, 2), jnp.uint32)
    else:
        keys = jax.random.split(jax.random.PRNGKey(0), batch)
    args = (
        _only(params, "unet"),
        cond,
        opt_state,
        _input(ab, (batch, comps.latent_channels, latent, latent)),
        keys,
        0,
        1,
    )
    return Step(
        f"inversion-step-{latent * comps.vae_scale_factor}",
        run,
        args,
        batch,
        what="fwd+bwd through the UNet into the conditioning, AdamW",
    )


def sd_generate(comps: Any, params: dict, batch: int, latent: int, num_steps: int) -> Step:
    """The whole sampler (DDIM, CFG w = 7.5, VAE decode) as augdiff runs it: one jit."""
    from augdiff.sd import pipelines

    ab = _abstract(params)
    d = int(comps.unet.cross_attention_dim)
    smp = pipelines.make_sampler(comps, "ddim", num_steps)
    w = jnp.full((batch,), 7.5, jnp.float32)

    def fn(params, noise, keys, cond, uncond):
        return pipelines._sample(
            comps,
            smp,
            "cfg",
            0,
            True,
            0.0,
            params,
            noise,
            keys,
            None,
            cond,
            uncond,
            None,
            None,
            None,
            w,
            w,
        )

    keys = (
        jax.ShapeDtypeStruct((batch, 2), jnp.uint32)
        if ab
        else jax.random.split(jax.random.PRNGKey(0), batch)
    )
    args = (
        params,
        _input(ab, (batch, comps.latent_channels, latent, latent)),
        keys,
        _input(ab, (batch, 77, d), seed=1),
        _input(ab, (batch, 77, d), seed=2),
    )
    return Step(
        f"ddim{num_steps}-cfg-{latent * comps.vae_scale_factor}",
        jax.jit(fn),
        args,
        batch,
        what=f"DDIM-{num_steps} with CFG + VAE decode",
    )


def edm_denoise(model: Any, params: dict, batch: int, res: int) -> Step:
    """One EDM denoiser call D(x; σ) (eq. 7); Heun-35 is 35 of them."""
    from augdiff.edm.core import denoise

    ab = _abstract(params)
    fn = jax.jit(
        lambda p, x, s: denoise(lambda pp, *a, **k: model.apply({"params": pp}, *a, **k), p, x, s)
    )
    return Step(
        "edm-denoise",
        fn,
        (params, _input(ab, (batch, res, res, 3)), _input(ab, (batch,), kind="uniform")),
        batch,
        calls=35,
    )


def edm_heun(model: Any, params: dict, batch: int, res: int, num_steps: int = 18) -> Step:
    from augdiff.edm.core import EDMConfig, denoise
    from augdiff.edm.samplers import sample

    ab = _abstract(params)
    apply = lambda pp, *a, **k: model.apply({"params": pp}, *a, **k)  # noqa: E731

    @jax.jit
    def fn(params, key):
        return sample(
            key,
            lambda x, s: denoise(apply, params, x, s),
            (batch, res, res, 3),
            num_steps,
            "heun",
            EDMConfig(),
        )

    key = jax.ShapeDtypeStruct((2,), jnp.uint32) if ab else jax.random.PRNGKey(0)
    return Step(
        f"edm-heun{2 * num_steps - 1}", fn, (params, key), batch, what="EDM Algorithm 1, one jit"
    )


def edm_train(model: Any, params: dict, batch: int, res: int) -> Step:
    import optax

    from augdiff.edm.core import EDMConfig, edm_loss

    ab = _abstract(params)
    opt = optax.adam(1e-4)
    opt_state = jax.eval_shape(opt.init, params) if ab else opt.init(params)
    apply = lambda pp, *a, **k: model.apply({"params": pp}, *a, **k)  # noqa: E731

    @jax.jit
    def fn(params, opt_state, key, x):
        k_loss, k_drop = jax.random.split(key)

        def loss_fn(p):
            return edm_loss(
                k_loss, apply, p, x, None, cfg=EDMConfig(), train=True, rngs={"dropout": k_drop}
            ).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    key = jax.ShapeDtypeStruct((2,), jnp.uint32) if ab else jax.random.PRNGKey(0)
    return Step(
        "edm-train-step",
        fn,
        (params, opt_state, key, _input(ab, (batch, res, res, 3), kind="uniform")),
        batch,
        fixed_argnums=(0, 1),
        what="EDM loss + Adam, dropout",
    )


def classifier_train(built: Any, batch: int, abstract: bool, donate: bool = True) -> Step:
    """``augdiff.train.classifier.make_train_step`` (SGD 0.9, wd 5e-4, crop/flip, CE)."""
    from augdiff import distributed
    from augdiff.train.classifier import (
        create_train_state,
        learning_rate_fn,
        make_optimizer,
        make_train_step,
        state_sharding,
    )

    optim = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine"}
    lr_fn = learning_rate_fn(optim, steps_per_epoch=100, epochs=10)
    tx = make_optimizer(optim, lr_fn)
    mesh = distributed.make_mesh(devices=jax.local_devices()[:1])
    def make():
        return create_train_state(jax.random.PRNGKey(0), built.module, tx, (32, 32, 3))

    state = jax.eval_shape(make) if abstract else make()
    if not abstract:
        state = jax.device_put(state, state_sharding(state, mesh))
    step = make_train_step(
        built.module,
        tx,
        mesh,
        state,
        num_classes=10,
        loss_kind="ce",
        augment={"crop_flip": True},
        lr_fn=lr_fn,
        donate=donate,
    )
    b = {
        "image": _input(abstract, (batch, 32, 32, 3), jnp.uint8, kind="int", high=256),
        "label": _input(abstract, (batch,), jnp.int32, kind="int", high=10),
        "weight": (
            jax.ShapeDtypeStruct((batch,), jnp.float32)
            if abstract
            else jnp.ones((batch,), jnp.float32)
        ),
        "source": (
            jax.ShapeDtypeStruct((batch,), jnp.int32)
            if abstract
            else jnp.zeros((batch,), jnp.int32)
        ),
    }
    if not abstract:
        b = distributed.shard_batch(jax.tree_util.tree_map(np.asarray, b), mesh)
    return Step(
        f"{built.name}-train-step", step, (state, b), batch, what="SGD, crop/flip on device, CE"
    )


# ----------------------------------------------------------------------------- floors

#: Dense BF16 tensor-core peak (no sparsity), SXM parts, from NVIDIA's datasheets
#: (the datasheets print 1,979 TFLOPS "with sparsity"; dense is half).
PEAK_BF16_FLOPS = {"H100 SXM (80 GB)": 989.4e12, "H200 SXM (141 GB)": 989.4e12}
HBM_BYTES = {"H100 SXM (80 GB)": 80e9, "H200 SXM (141 GB)": 141e9}


def _nbytes(tree: Any) -> int:
    return int(
        sum(
            math.prod(x.shape) * jnp.dtype(x.dtype).itemsize
            for x in jax.tree_util.tree_leaves(tree)
            if hasattr(x, "shape")
        )
    )


@contextlib.contextmanager
def accelerator_code_path():
    """Trace with the code path an accelerator runs: XLA's native convolution weight gradient
    (``AUGDIFF_CONV_WGRAD=native``; the CPU path sums chunked GEMMs in a ``lax.scan``, whose
    body XLA's cost analysis counts once) and XLA's convolutions in the SD UNet
    (``AUGDIFF_SD_CONV=xla``). The FLOPs of a step are counted on this path."""
    old = {k: os.environ.get(k) for k in ("AUGDIFF_CONV_WGRAD", "AUGDIFF_SD_CONV")}
    os.environ.update(AUGDIFF_CONV_WGRAD="native", AUGDIFF_SD_CONV="xla")
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def model_flops(step: Step) -> float:
    """FLOPs of one call of ``step`` on :func:`accelerator_code_path` (HLO cost analysis of
    the lowered, unoptimised step: no compile; compiled executables already held stay valid)."""
    jax.clear_caches()  # jit's trace cache would hand back the jaxpr traced on the CPU path
    with accelerator_code_path():
        cost = step.fn.lower(*step.args).cost_analysis()
    jax.clear_caches()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost.get("flops", 0.0))


def compiled_cost(compiled: Any) -> dict[str, float]:
    """FLOPs of one call (``compiled.cost_analysis()``) and its peak memory
    (``compiled.memory_analysis()``: arguments + outputs + temporaries − aliased, i.e. donated,
    bytes) of an XLA-compiled step."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    mem = compiled.memory_analysis()
    peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes)
    return {"flops": float(cost.get("flops", 0.0)), "peak_bytes": float(peak),
            "temp_bytes": float(mem.temp_size_in_bytes)}


def floors(step: Step) -> dict[str, Any]:
    """FLOPs (``compiled.cost_analysis()``) and peak memory (``compiled.memory_analysis()``) of
    one call, the compute floor per unit of work on each GPU of :data:`PEAK_BF16_FLOPS`, and
    the largest batch that fits its HBM.

    Peak memory = arguments + outputs + temporaries − aliased (donated) bytes. The largest
    batch is a linear extrapolation: the bytes of the arguments that do not grow with the
    batch (``fixed_argnums``: weights, optimiser state) stay, the rest scales with the batch.
    XLA's cost analysis counts a loop body once, so a sampler is measured per call and
    multiplied by ``calls``. The step is compiled on :func:`accelerator_code_path`.
    """
    import time

    t0 = time.perf_counter()
    jax.clear_caches()  # trace afresh, on the accelerator's path
    with accelerator_code_path():
        compiled = step.fn.lower(*step.args).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled_cost(compiled)
    flops, peak = cost["flops"], cost["peak_bytes"]
    mem_temp = cost["temp_bytes"]
    fixed = sum(_nbytes(step.args[i]) for i in step.fixed_argnums)
    per_image = max(peak - fixed, 1) / step.batch
    out: dict[str, Any] = dict(
        step=step.name,
        what=step.what,
        batch=step.batch,
        calls=step.calls,
        gflop_per_call=flops / 1e9,
        gflop_per_image=flops * step.calls / step.batch / 1e9,
        peak_gib=peak / 2**30,
        fixed_gib=fixed / 2**30,
        temp_gib=mem_temp / 2**30,
        compile_s_cpu=compile_s,
    )
    for gpu, peak_flops in PEAK_BF16_FLOPS.items():
        out[f"floor_ms_per_unit[{gpu}]"] = 1e3 * flops * step.calls / step.batch / peak_flops
        out[f"max_batch[{gpu}]"] = int(max(0, (HBM_BYTES[gpu] - fixed) // per_image))
    return out
