"""Every jitted program an experiment runs, at its real size, sharded as a launch shards it.

A :class:`Program` is one of augdiff's own jitted functions (the same builder the stage calls:
:func:`augdiff.edm.train.jit_train_step`, :func:`augdiff.edm.sampling.jit_sampler`,
:func:`augdiff.train.classifier.make_train_step` / ``make_eval_step``, the SD sampler
:func:`augdiff.sd.pipelines._sample`, Diffusion Inversion's stage-1 loop
:func:`augdiff.methods.inversion._train_fn`, :class:`augdiff.methods.online.OnlineEDM`'s
refresh) with abstract arguments (``jax.ShapeDtypeStruct`` carrying the ``NamedSharding`` the
stage gives the real array: parameters replicated, rows split over ``('data', 'fsdp')`` by
:mod:`augdiff.distributed`). Models are built from their configs with ``jax.eval_shape``, so no
weights are read and nothing is allocated; SD models come from their published architectures
(:mod:`augdiff.sd.architectures`).

The mesh is :func:`augdiff.distributed.make_mesh` over the target's devices, with the config's
``mesh.data`` / ``mesh.fsdp``: the mesh a launch builds over ``jax.devices()``. Multi-host
topologies need nothing else: a global batch of ``B`` rows is the same global array whichever
process holds which rows (:func:`augdiff.distributed.host_local_to_global`).

FLOPs: XLA's cost analysis counts a loop body once, so each program also says how to count the
FLOPs of one unit of work (``flops``): the un-jitted step or one model call, lowered for the
host (no compile) and multiplied by the calls a unit makes (e.g. the UNet evaluations of a
DDIM-50 image).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding

from augdiff import distributed
from augdiff.config import ConfigError
from augdiff.data.online import online_config, online_rows
from augdiff.edm import model as edm_model
from augdiff.edm import samplers as edm_samplers
from augdiff.edm import train as edm_train
from augdiff.edm.core import denoise
from augdiff.edm.sampling import jit_sampler, make_sample_fn
from augdiff.methods import inversion
from augdiff.methods.online import OnlineEDM
from augdiff.pipeline import wiring
from augdiff.sd import architectures, attention, pipelines
from augdiff.train import classifier as clf


@dataclasses.dataclass
class Program:
    """One jitted program of a stage, ready to ``fn.lower(*args).compile()``.

    Attributes:
      name: what it is (e.g. ``"EDM train step"``).
      stage: the pipeline stage (or command) that runs it.
      fn: the jitted function, with the stage's shardings.
      args: its abstract arguments, each leaf a ``jax.ShapeDtypeStruct`` with its sharding.
      batch: images (rows) per call, over the whole mesh.
      unit: one unit of work (``"image"``, ``"DDIM-50 CFG image"``, ``"image-step"``).
      flops: FLOPs of one unit of work (a function: counting lowers a program).
      fixed_argnums: arguments whose size does not grow with the batch (weights, state).
      rebuild: the same program at another global batch (the largest-batch search).
      mesh: the mesh it is laid out on (traced under :func:`augdiff.distributed.mesh_context`,
        as the stages run it).
    """

    name: str
    stage: str
    fn: Any
    args: tuple
    batch: int
    unit: str
    flops: Callable[[], float]
    fixed_argnums: tuple[int, ...] = (0,)
    rebuild: Callable[[int], Program] | None = None
    mesh: Mesh | None = None


# ----------------------------------------------------------------------------- helpers


def sharded(shape: tuple[int, ...], dtype: Any, sharding: NamedSharding) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype), sharding=sharding)


def place(tree: Any, sharding: Any) -> Any:
    """Every leaf of an abstract tree on ``sharding`` (one sharding, or a matching tree)."""
    if isinstance(sharding, NamedSharding):
        return jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree)
    return jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, sharding)


def unsharded(tree: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype)
        if isinstance(a, jax.ShapeDtypeStruct) else a, tree)


def host_flops(fn: Callable[..., Any], *args: Any, static: tuple[int, ...] = ()) -> float:
    """FLOPs of one call of ``fn`` (XLA's cost analysis of the program lowered for this host,
    no compile), traced on the target platform's code path (the caller's
    :func:`augdiff.distributed.compiling_for`)."""
    # counted with XLA's attention: a Pallas or cuDNN kernel lowers for its own chip only, and
    # the arithmetic is the same
    with attention.use("xla"):
        lowered = jax.jit(fn, static_argnums=static).lower(*unsharded(args))
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float((cost or {}).get("flops", 0.0))


def round_up(n: int, multiple: int) -> int:
    return max(-(-int(n) // multiple) * multiple, multiple)


def num_classes_of(config: ml_collections.ConfigDict) -> int:
    """The class count a run would read from its data: ``model.num_classes`` or
    ``data.num_classes`` when set, else 100 for a CIFAR-100 dataset and 10 otherwise."""
    for block in ("model", "data"):
        sub = config.get(block, None)
        if sub is not None and int(sub.get("num_classes", 0) or 0) > 0:
            return int(sub.num_classes)
    data = config.get("data", ml_collections.ConfigDict())
    names = f"{data.get('tfds_name', '')} {data.get('path', '')} {config.get('name', '')}"
    return 100 if "100" in names else 10


# --------------------------------------------------------------------------------- EDM


def _edm_model(config: ml_collections.ConfigDict) -> tuple[Any, int]:
    num_classes = num_classes_of(config)
    return edm_model.build_model(config, num_classes=num_classes), num_classes


def edm_train_program(config: ml_collections.ConfigDict, mesh: Mesh, stage: str,
                      batch: int | None = None) -> Program:
    """:func:`augdiff.edm.train.train_step` as ``train`` jits it (augmentation pipe, EMA and
    all), on a global batch of ``train.batch_size`` images."""
    b = int(batch or config.train.batch_size)
    b = round_up(b, distributed.num_batch_shards(mesh))
    model, num_classes = _edm_model(config)
    cfg = edm_train.StepConfig.from_config(config, num_classes=num_classes)
    optimizer = edm_model.make_optimizer(config)
    kwargs = dict(net_apply=edm_model.make_net_apply(model), optimizer=optimizer,
                  edm_cfg=edm_model.edm_config(config), cfg=cfg)
    rep, rows = distributed.replicated(mesh), distributed.batch_sharding(mesh)
    state = edm_model.abstract_state(config, model, sharding=rep)
    size, ch = int(config.data.image_size), int(config.data.channels)
    batch_args = {"image": sharded((b, size, size, ch), jnp.uint8, rows),
                  "source": sharded((b,), jnp.int32, rows),
                  "label": sharded((b,), jnp.int32, rows)}
    args = (state, batch_args, sharded((2,), jnp.uint32, rep))
    fn = edm_train.jit_train_step(mesh, state, **kwargs)

    def flops() -> float:
        step = lambda s, x, k: edm_train.train_step(s, x, k, **kwargs)  # noqa: E731
        return host_flops(step, *args) / b

    return Program("EDM train step (loss, Adam, EMA)", stage, fn, args, b, "image", flops,
                   rebuild=lambda n: edm_train_program(config, mesh, stage, n))


def edm_sample_program(config: ml_collections.ConfigDict, mesh: Mesh, stage: str,
                       batch: int | None = None) -> Program:
    """:func:`augdiff.edm.sampling.make_sample_fn` jitted by :func:`jit_sampler`, as
    ``sample_to_store`` runs it on ``sample.batch_size`` images."""
    s = config.sample
    b = round_up(int(batch or s.batch_size), distributed.num_batch_shards(mesh))
    model, num_classes = _edm_model(config)
    size, ch = int(config.data.image_size), int(config.data.channels)
    net_apply, edm_cfg = edm_model.make_net_apply(model), edm_model.edm_config(config)
    sample_fn = make_sample_fn(
        net_apply, edm_cfg, mode=str(config.mode), image_shape=(size, size, ch),
        num_sources=int(config.model.num_sources), num_classes=num_classes,
        class_conditional=bool(config.model.class_conditional), sampler=str(s.sampler),
        num_steps=int(s.num_steps), source_label=int(s.source_label),
        guidance=float(s.guidance), guidance_label=int(s.guidance_label),
        churn=dict(S_churn=float(s.S_churn), S_min=float(s.S_min), S_max=float(s.S_max),
                   S_noise=float(s.S_noise)))
    rep, rows = distributed.replicated(mesh), distributed.batch_sharding(mesh)
    params = place(edm_model.abstract_state(config, model).ema, rep)
    args = (params, sharded((2,), jnp.uint32, rep), sharded((b,), jnp.int32, rows),
            sharded((b,), jnp.int32, rows))
    calls = edm_samplers.nfe(str(s.sampler), int(s.num_steps))
    guided = float(s.guidance) != 1.0

    def flops() -> float:
        return calls * _denoise_flops(net_apply, params, model, config, b * (2 if guided else 1),
                                      edm_cfg) / b

    unit = f"{str(s.sampler).capitalize()}-{int(s.num_steps)} image ({calls} calls)"
    return Program(f"EDM {s.sampler} sampler, {int(s.num_steps)} steps", stage,
                   jit_sampler(sample_fn, mesh), args, b, unit, flops,
                   rebuild=lambda n: edm_sample_program(config, mesh, stage, n))


def _denoise_flops(net_apply: Callable[..., Any], params: Any, model: Any,
                   config: ml_collections.ConfigDict, rows: int, edm_cfg: Any) -> float:
    """FLOPs of one denoiser call D(x; σ, labels) on ``rows`` images (EDM eq. 7)."""
    size, ch = int(config.data.image_size), int(config.data.channels)
    labels = {}
    if getattr(model, "casd", False):
        labels["source"] = jax.ShapeDtypeStruct((rows,), jnp.int32)
    if getattr(model, "label_dim", 0):
        labels["class"] = jax.ShapeDtypeStruct((rows,), jnp.int32)

    def call(p, x, sigma, lab):
        return denoise(net_apply, p, x, sigma, lab or None, train=False,
                       sigma_data=edm_cfg.sigma_data)

    return host_flops(call, params, jax.ShapeDtypeStruct((rows, size, size, ch), jnp.float32),
                      jax.ShapeDtypeStruct((rows,), jnp.float32), labels)


def online_edm_program(config: ml_collections.ConfigDict, generator: ml_collections.ConfigDict,
                       mesh: Mesh, stage: str, batch: int | None = None) -> Program:
    """The refresh of :class:`augdiff.methods.online.OnlineEDM`: Heun sampling of one replay
    buffer of the classifier's synthetic rows, from the generator ``generator`` describes."""
    on = online_config(config)
    m = int(batch or online_rows(config))
    model, num_classes = _edm_model(generator)
    size, ch = int(generator.data.image_size), int(generator.data.channels)
    rep = distributed.replicated(mesh)
    params = place(edm_model.abstract_state(generator, model).ema, rep)
    refresh_every = int(on.get("refresh_every", 1))
    source = OnlineEDM(
        net_apply=edm_model.make_net_apply(model), params=params,
        edm_cfg=edm_model.edm_config(generator), image_shape=(size, size, ch),
        probs=np.full(num_classes, 1.0 / num_classes), rows=m, mesh=mesh,
        num_steps=int(on.get("num_steps", 10)), refresh_every=refresh_every,
        buffer_size=int(on.get("buffer_size", 0)), mode=str(generator.mode),
        num_sources=int(generator.model.num_sources))
    fn, args = source.refresh_program()
    calls = edm_samplers.nfe("heun", int(on.get("num_steps", 10)))
    n_buf = source.buffer_size

    def flops() -> float:
        return calls * _denoise_flops(source.net_apply, params, model, generator, n_buf,
                                      source.edm_cfg) / n_buf

    return Program(f"online EDM refresh (Heun-{int(on.get('num_steps', 10))}, "
                   f"{m} synthetic rows per step)", stage, fn, args, n_buf,
                   f"synthetic row ({calls} calls)", flops,
                   rebuild=lambda n: online_edm_program(config, generator, mesh, stage, n))


# --------------------------------------------------------------------------- classifier


def classifier_programs(config: ml_collections.ConfigDict, mesh: Mesh,
                        stage: str) -> list[Program]:
    """The classifier's train and eval steps, as ``train_and_evaluate`` builds them."""
    return [classifier_train_program(config, mesh, stage),
            classifier_eval_program(config, mesh, stage)]


def _classifier_state(config: ml_collections.ConfigDict, mesh: Mesh) -> tuple[Any, ...]:
    num_classes = num_classes_of(config)
    steps = int(config.get("steps_per_epoch", 0) or 0) or 1
    model, lr_fn, tx, image_shape = clf.build_classifier(config, num_classes, steps)
    abstract = jax.eval_shape(
        lambda k: clf.create_train_state(k, model, tx, image_shape), jax.random.PRNGKey(0))
    state = place(abstract, clf.state_sharding(abstract, mesh))
    return model, lr_fn, tx, image_shape, num_classes, state


def classifier_train_program(config: ml_collections.ConfigDict, mesh: Mesh, stage: str,
                             batch: int | None = None) -> Program:
    b = round_up(int(batch or config.batch_size), distributed.num_batch_shards(mesh))
    model, lr_fn, tx, image_shape, num_classes, state = _classifier_state(config, mesh)
    fn = clf.make_train_step(model, tx, mesh, state, num_classes=num_classes,
                             loss_kind=str(config.loss.kind), augment=config.augment.to_dict(),
                             lr_fn=lr_fn)
    fields = {"label": jnp.int32, "weight": jnp.float32, "source": jnp.int32}
    return _classifier_step(f"{config.model.name} train step", stage, fn, state, mesh, b,
                            image_shape, fields,
                            lambda n: classifier_train_program(config, mesh, stage, n))


def classifier_eval_program(config: ml_collections.ConfigDict, mesh: Mesh, stage: str,
                            batch: int | None = None) -> Program:
    shards = distributed.num_batch_shards(mesh)
    b = round_up(int(batch or config.get("eval_batch_size", 0) or config.batch_size), shards)
    model, _, _, image_shape, num_classes, state = _classifier_state(config, mesh)
    fn = clf.make_eval_step(model, mesh, state, loss_kind=str(config.loss.kind),
                            num_classes=num_classes)
    return _classifier_step(f"{config.model.name} eval step", stage, fn, state, mesh, b,
                            image_shape, {"label": jnp.int32, "mask": jnp.float32},
                            lambda n: classifier_eval_program(config, mesh, stage, n))


def _classifier_step(name: str, stage: str, fn: Any, state: Any, mesh: Mesh, b: int,
                     image_shape: tuple[int, ...], fields: dict[str, Any],
                     rebuild: Callable[[int], Program]) -> Program:
    """A classifier step on a batch of ``b`` uint8 images and per-row ``fields``, split over
    the mesh as the loader's batches are."""
    rows = distributed.batch_sharding(mesh)
    batch_args = {"image": sharded((b, *image_shape), jnp.uint8, rows),
                  **{k: sharded((b,), dtype, rows) for k, dtype in fields.items()}}
    args = (state, batch_args)

    def flops() -> float:
        return host_flops(fn.__wrapped__, *args) / b

    return Program(name, stage, fn, args, b, "image", flops, rebuild=rebuild)


# --------------------------------------------------------------------------- SD methods


def sd_sample_program(components: Any, params: dict, mesh: Mesh, stage: str, *, mode: str,
                      sampler: str, steps: int, resolution: int, batch: int, tokens: int = 77,
                      start: int = 0, name: str = "") -> Program:
    """:func:`augdiff.sd.pipelines._sample` (initial latent, the whole guided denoising loop and
    the VAE decode in one jit) on ``batch`` rows of ``resolution²``, ``mode`` ``cfg`` (with
    unCLIP's image-embedding conditioning for an unCLIP model), ``ip2p`` (three branches) or
    ``none``; ``start > 0`` is img2img's partial loop."""
    b = round_up(batch, distributed.num_batch_shards(mesh))
    rep, rows = distributed.replicated(mesh), distributed.batch_sharding(mesh)
    f = components.vae_scale_factor
    lat = (components.latent_channels, resolution // f, resolution // f)
    d = int(components.unet.cross_attention_dim)
    smp = pipelines.make_sampler(components, sampler, steps)
    params = place(params, rep)
    unclip = components.kind == "unclip"
    x = lambda *shape: sharded((b, *shape), jnp.float32, rows)  # noqa: E731
    img = x(*lat) if mode == "ip2p" else None
    cls_dim = int(params["class_embedding"]["linear_1"]["kernel"].shape[0]) if unclip else 0
    cls = x(cls_dim) if unclip else None
    init = x(*lat) if start > 0 else None
    dyn = (params, x(*lat), sharded((b, 2), jnp.uint32, rows), init, x(tokens, d),
           x(tokens, d) if mode != "none" else None, cls,
           cls if (unclip and mode == "cfg") else None, img, x(), x())
    static = (components, smp, mode, int(start), True, 0.0)
    fn = jax.jit(lambda *a: pipelines._sample(*static, *a))
    branches = {"none": 1, "cfg": 2, "ip2p": 3}[mode]
    calls = smp.num_steps - int(start)

    def flops() -> float:
        def unet(p, xx, t, ctx, c, im):
            return pipelines.unet_output(components, p, xx, t, ctx, c, im)

        rows_ = branches * b
        call = host_flops(
            unet, params, jax.ShapeDtypeStruct((rows_, *lat), jnp.float32),
            jax.ShapeDtypeStruct((), jnp.int32), jax.ShapeDtypeStruct((rows_, tokens, d),
                                                                       jnp.float32),
            jax.ShapeDtypeStruct((rows_, cls_dim), jnp.float32) if unclip else None,
            jax.ShapeDtypeStruct((rows_, *lat), jnp.float32) if mode == "ip2p" else None)
        dec = host_flops(lambda p, z: pipelines._decode(components, p, z), params,
                         jax.ShapeDtypeStruct((b, *lat), jnp.float32))
        return (calls * call + dec) / b

    what = {"none": "", "cfg": " CFG", "ip2p": " InstructPix2Pix (3 branches)"}[mode]
    unit = f"{sampler}-{calls}{what} image, {resolution}²"
    return Program(name or f"SD {components.kind} sampler{what}, {resolution}²", stage, fn,
                   dyn, b, unit, flops,
                   rebuild=lambda n: sd_sample_program(
                       components, params, mesh, stage, mode=mode, sampler=sampler,
                       steps=steps, resolution=resolution, batch=n, tokens=tokens, start=start,
                       name=name))


def vae_encode_program(components: Any, params: dict, mesh: Mesh, stage: str, *,
                       resolution: int, batch: int, posterior_sample: bool, scaled: bool,
                       name: str = "") -> Program:
    """The VAE encoder (:func:`augdiff.sd.pipelines._vae_encode`) on ``batch`` real images of
    ``resolution²``, rows split over the mesh as img2img / InstructPix2Pix encode them."""
    b = round_up(batch, distributed.num_batch_shards(mesh))
    rep, rows = distributed.replicated(mesh), distributed.batch_sharding(mesh)
    f = components.vae_scale_factor
    lat = (components.latent_channels, resolution // f, resolution // f)
    images = sharded((b, resolution, resolution, 3), jnp.float32, rows)
    noise = sharded((b, *lat), jnp.float32, rows) if posterior_sample else None
    args = (place(params, rep), images, noise)
    fn = jax.jit(lambda p, x, z: pipelines._vae_encode(components, p, x, z, scaled))

    def flops() -> float:
        return host_flops(lambda p, x, z: pipelines._vae_encode.__wrapped__(
            components, p, x, z, scaled), *args) / b

    return Program(name or f"VAE encode, {resolution}²", stage, fn, args, b, "image", flops,
                   rebuild=lambda n: vae_encode_program(
                       components, params, mesh, stage, resolution=resolution, batch=n,
                       posterior_sample=posterior_sample, scaled=scaled, name=name))


def inversion_program(components: Any, params: dict, mesh: Mesh, stage: str, *,
                      learning_rate: float, weight_decay: float, resolution: int, tokens: int,
                      batch: int) -> Program:
    """Diffusion Inversion stage 1 (:func:`augdiff.methods.inversion.invert`): steps of
    fwd + bwd through the frozen UNet into the per-image conditionings, AdamW, in one
    ``fori_loop``; rows (vectors, latents, keys, Adam moments) split over the mesh."""
    b = round_up(batch, distributed.num_batch_shards(mesh))
    rep, rows = distributed.replicated(mesh), distributed.batch_sharding(mesh)
    f = components.vae_scale_factor
    lat = (components.latent_channels, resolution // f, resolution // f)
    d = int(components.unet.cross_attention_dim)
    fn = inversion._train_fn(components, float(learning_rate), float(weight_decay), mesh)
    optimizer = inversion.make_optimizer(learning_rate, weight_decay)
    cond = sharded((b, tokens, d), jnp.float32, rows)
    opt_state = place(jax.eval_shape(optimizer.init, unsharded(cond)),
                      inversion._opt_state_sharding(optimizer, mesh))
    step = jax.ShapeDtypeStruct((), jnp.int32)
    args = (place(params, rep), cond, opt_state, sharded((b, *lat), jnp.float32, rows),
            sharded((b, 2), jnp.uint32, rows), step, step)

    def flops() -> float:  # the loop body counted once: one step
        return host_flops(fn.__wrapped__, *args) / b

    return Program(f"Diffusion Inversion stage-1 step, {resolution}²", stage, fn, args, b,
                   "image-step", flops, fixed_argnums=(0,),
                   rebuild=lambda n: inversion_program(
                       components, params, mesh, stage, learning_rate=learning_rate,
                       weight_decay=weight_decay, resolution=resolution, tokens=tokens,
                       batch=n))


def _sd(path: str, tiny: bool, dtype: str, kind: str) -> tuple[Any, dict]:
    arch = architectures.architecture_of(str(path or ""), tiny=bool(tiny), kind=kind)
    return architectures.abstract_sd(arch, dtype)


def method_programs(config: ml_collections.ConfigDict, mesh: Mesh, stage: str) -> list[Program]:
    """The programs of an ``augdiff generate`` method config (``config.method``)."""
    method = str(config.method)
    if method == "diffinv":
        comps, params = _sd(config.model.path, config.model.tiny, config.model.dtype, "txt2img")
        inv, smp = config.inversion, config.sampling
        return [
            inversion_program(comps, params, mesh, stage, learning_rate=inv.learning_rate,
                              weight_decay=inv.weight_decay, resolution=int(inv.resolution),
                              tokens=int(inv.num_tokens), batch=int(inv.batch_size)),
            sd_sample_program(comps, params, mesh, stage, mode="cfg", sampler=str(smp.sampler),
                              steps=int(smp.steps), resolution=int(inv.resolution),
                              batch=int(smp.batch_size), tokens=int(inv.num_tokens),
                              name=f"Diffusion Inversion stage 2: {smp.sampler}-{smp.steps} "
                                   f"CFG, {inv.resolution}²"),
        ]
    if method == "diffusemix":
        g = config.diffusemix
        if str(g.editor) != "ip2p":
            raise ConfigError(f"augdiff compile: diffusemix.editor={g.editor!r} is not built "
                              "here yet (ip2p only)")
        comps, params = _sd(g.model, g.tiny, g.dtype, "ip2p")
        return [vae_encode_program(comps, params, mesh, stage, resolution=int(g.resolution),
                                   batch=int(g.batch_size), posterior_sample=False,
                                   scaled=False, name=f"InstructPix2Pix image encode, "
                                                      f"{g.resolution}²"),
                sd_sample_program(comps, params, mesh, stage, mode="ip2p",
                                  sampler=str(g.sampler), steps=int(g.steps),
                                  resolution=int(g.resolution), batch=int(g.batch_size),
                                  name=f"InstructPix2Pix edit, {g.sampler}-{g.steps}, "
                                       f"{g.resolution}²")]
    if method == "augcond":
        a = config.augcond
        comps, params = _sd(config.model.path, config.model.tiny, config.model.dtype, "unclip")
        return [sd_sample_program(comps, params, mesh, stage,
                                  mode="cfg" if float(a.guidance) > 1 else "none",
                                  sampler=str(a.sampler), steps=int(a.steps),
                                  resolution=int(a.resolution), batch=int(a.batch_size),
                                  name=f"unCLIP image-embedding sampler, {a.sampler}-{a.steps}, "
                                       f"{a.resolution}²")]
    if method == "sd":
        s = config.sd
        comps, params = _sd(s.model, s.tiny, s.dtype, "txt2img")
        start, encode = 0, []
        if str(s.mode) == "img2img":
            start = pipelines.make_sampler(comps, str(s.sampler), int(s.steps)).img2img_start(
                float(s.strength))
            encode = [vae_encode_program(comps, params, mesh, stage,
                                         resolution=int(s.resolution), batch=int(s.batch_size),
                                         posterior_sample=True, scaled=True,
                                         name=f"img2img image encode, {s.resolution}²")]
        return encode + [sd_sample_program(comps, params, mesh, stage,
                                  mode="cfg" if float(s.guidance) > 1 else "none",
                                  sampler=str(s.sampler), steps=int(s.steps),
                                  resolution=int(s.resolution), batch=int(s.batch_size),
                                  start=start, name=f"SD {s.mode}, {s.sampler}-{s.steps}, "
                                                    f"{s.resolution}²")]
    raise ConfigError(f"augdiff compile: method {method!r} has no programs here")


# ---------------------------------------------------------------------------- dispatch


def is_experiment(config: ml_collections.ConfigDict) -> bool:
    return "stages" in config and "seeds" in config


def programs_for(config: ml_collections.ConfigDict, mesh: Mesh) -> list[Program]:
    """Every program ``config`` runs: an experiment's stages (``augdiff run``), or the command
    a component config is for (``train-diffusion`` + ``sample``, ``generate``, ``train``)."""
    programs = _programs_for(config, mesh)
    for p in programs:
        p.mesh = mesh
    return programs


def _programs_for(config: ml_collections.ConfigDict, mesh: Mesh) -> list[Program]:
    if is_experiment(config):
        return experiment_programs(config, mesh)
    if "method" in config:
        return method_programs(config, mesh, "generate")
    if "mode" in config and "sample" in config:
        return [edm_train_program(config, mesh, "train-diffusion"),
                edm_sample_program(config, mesh, "sample")]
    if "optim" in config:
        return classifier_programs(config, mesh, "train")
    raise ConfigError("augdiff compile: the config is neither an experiment nor a generate, "
                      "train-diffusion or train config")


def experiment_programs(config: ml_collections.ConfigDict, mesh: Mesh) -> list[Program]:
    stages = wiring.stage_list(config)
    out: list[Program] = []
    gen = config.get("generator", None)
    edm_gen = None
    if gen is not None and str(gen.get("kind", "edm")) == "edm":
        edm_gen = wiring.generator_config(config)
        if "train_generator" in stages:
            out.append(edm_train_program(edm_gen, mesh, "train_generator"))
        if "generate" in stages:
            out.append(edm_sample_program(edm_gen, mesh, "generate"))
    elif gen is not None and "generate" in stages:
        out.extend(method_programs(wiring.method_config(config), mesh, "generate"))
    train_stages = [s for s in stages if s.startswith("train_") and s != "train_generator"]
    if train_stages:
        kinds = [s[len("train_"):] for s in train_stages]
        real = wiring.classifier_config(config, "real", 0, num_real=1)
        out.extend(classifier_programs(real, mesh, "/".join(train_stages)))
        online = wiring.mixed_online(config)
        if "mixed" in kinds and online is not None:
            mixed = wiring.classifier_config(config, "mixed", 0, num_real=1)
            if str(online.get("kind")) != "edm":
                raise ConfigError(f"augdiff compile: mixed.online.kind={online.get('kind')!r} "
                                  "is not built here yet (edm only)")
            if edm_gen is None:
                raise ConfigError("augdiff compile: mixed.online needs an EDM generator")
            out.append(online_edm_program(mixed, edm_gen, mesh, "train_mixed"))
    return out

