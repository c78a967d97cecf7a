"""Cost of online EDM generation (``synthetic.online``) against the classifier step it feeds.

    python benchmarks/bench_online.py [--batch 64] [--share 0.5] [--steps 10,4]
        [--refresh 1,4] [--rounds 3] [--json OUT] [--flops-only] [--checkpoint DIR]

Quickstart scale (configs/quickstart.py): a class-conditional EDM SongUNet preset ``tiny``
(32 channels, 16²) and the ``preact_resnet_tiny`` (width 16) classifier, batch 64, half of it
synthetic. For each Heun step count ``N`` (NFE ``2N − 1``) and refresh period ``R`` it reports

- XLA FLOPs per synthetic image: ``NFE ×`` the ``compiled.cost_analysis()`` FLOPs of one
  denoiser call ``D(x; σ, c)`` per row (XLA counts a ``fori_loop`` body once, so the cost of a
  whole refresh under-reports the sampler; its raw figure is printed as ``loop_body_gflops``),
- generator seconds per train step (one refresh / ``R``) and its share of the whole step
  (generator + classifier step), in wall and process CPU seconds, timed interleaved.

Weights are random (cost does not depend on them) unless ``--checkpoint`` names a generator.
The edit source (``synthetic.online.kind = 'edit'``) costs the same per network call: an
SDEdit of ``N`` Heun steps from ``σ_start`` is ``2N − 1`` calls per image (plus a hybrid and
fractal blend, elementwise).
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from augdiff import distributed
from augdiff.edm import train as edm_train
from augdiff.edm.core import EDMConfig
from augdiff.methods.online import OnlineEDM
from augdiff.models.classifiers import get_classifier
from augdiff.train.classifier import (
    create_train_state,
    learning_rate_fn,
    make_optimizer,
    make_train_step,
    state_sharding,
)

C, SIZE = 10, 16


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _flops(compiled) -> float:
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, list | tuple) else ca
    return float(ca.get("flops", float("nan")))


def _timed(fn, rounds):
    walls, cpus = [], []
    for _ in range(rounds):
        t, c = time.perf_counter(), _cpu()
        jax.block_until_ready(fn())
        walls.append(time.perf_counter() - t)
        cpus.append(_cpu() - c)
    return float(np.median(walls)), float(np.median(cpus))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--share", type=float, default=0.5)
    ap.add_argument("--steps", default="10,4")
    ap.add_argument("--refresh", default="1,4")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default="")
    ap.add_argument("--flops-only", action="store_true", help="compile, do not time")
    ap.add_argument("--checkpoint", default="",
                    help="a train-diffusion workdir (e.g. augdiff/assets/generator_cifar10): "
                         "its generator instead of the random-weight tiny preset")
    a = ap.parse_args()

    mesh = distributed.make_mesh()
    m = int(round(a.share * a.batch))
    # the generator: quickstart's overrides of configs/casd_cifar10.py:classcond
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "augdiff" / "configs" / "casd_cifar10.py"
    spec = importlib.util.spec_from_file_location("casd_cfg", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ecfg = mod.get_config("classcond")
    ecfg.data.image_size = SIZE
    ecfg.model.preset, ecfg.model.model_channels, ecfg.model.dropout = "tiny", 32, 0.0
    ecfg.train.precision = "float32"
    emodel = edm_train.build_model(ecfg, num_classes=C, precision="float32")
    est = edm_train.init_state(jax.random.PRNGKey(0), emodel, edm_train.make_optimizer(ecfg),
                               (1, SIZE, SIZE, 3),
                               edm_train.StepConfig.from_config(ecfg, num_classes=C))
    eparams = distributed.replicate(est.ema, mesh)
    net_apply = edm_train.make_net_apply(emodel)
    if a.checkpoint:
        from augdiff.methods.online import load_generator

        g = load_generator(a.checkpoint, mesh)
        net_apply, eparams = g["net_apply"], g["params"]

    # the classifier step (quickstart classifier overrides)
    optim = ml_collections.ConfigDict({"name": "sgd", "lr": 0.1, "momentum": 0.9,
                                       "weight_decay": 5e-4, "schedule": "cosine"})
    lr_fn = learning_rate_fn(optim, 100, 4)
    tx = make_optimizer(optim, lr_fn)
    model = get_classifier("preact_resnet_tiny", C, width=16)
    state = create_train_state(jax.random.PRNGKey(1), model, tx, (SIZE, SIZE, 3))
    state = jax.device_put(state, state_sharding(state, mesh))
    step = make_train_step(model, tx, mesh, state, num_classes=C, lr_fn=lr_fn,
                           augment={"crop_pad": 2}, donate=False)
    rng = np.random.default_rng(0)
    real = distributed.shard_batch({
        "image": rng.integers(0, 256, (a.batch - m, SIZE, SIZE, 3), dtype=np.uint8),
        "label": rng.integers(0, C, a.batch - m).astype(np.int32),
        "weight": np.ones(a.batch - m, np.float32),
        "source": np.zeros(a.batch - m, np.int32)}, mesh)

    from augdiff.edm.core import denoise

    def one_call(params, x, sigma, labels):
        return denoise(net_apply, params, x, sigma, {"class": labels})

    xs = jnp.zeros((m, SIZE, SIZE, 3), jnp.float32)
    per_nfe = _flops(jax.jit(one_call).lower(eparams, xs, jnp.float32(1.0),
                                             jnp.zeros((m,), jnp.int32)).compile()) / m
    rows = []
    for n_steps in [int(s) for s in a.steps.split(",")]:
        for refresh in [int(r) for r in a.refresh.split(",")]:
            gen = OnlineEDM(net_apply=net_apply, params=eparams,
                            edm_cfg=EDMConfig(), image_shape=(SIZE, SIZE, 3),
                            probs=np.full(C, 1 / C), rows=m, mesh=mesh, num_steps=n_steps,
                            refresh_every=refresh, buffer_size=m)
            r0 = jnp.asarray(0, jnp.int32)
            comp = gen._refresh.lower(eparams, r0).compile()
            body = _flops(comp) / gen.buffer_size
            batch = gen.complete(real, 0)
            step_flops = _flops(step.lower(state, batch).compile())
            row = {"num_steps": n_steps, "nfe": 2 * n_steps - 1, "refresh_every": refresh,
                   "synthetic_rows": m, "batch": a.batch, "gflops_per_nfe": per_nfe / 1e9,
                   "gflops_per_image": per_nfe * (2 * n_steps - 1) / 1e9,
                   "loop_body_gflops": body / 1e9,
                   "classifier_step_gflops": step_flops / 1e9}
            if a.flops_only:
                rows.append(row)
                print(json.dumps(row), flush=True)
                continue
            jax.block_until_ready(step(state, batch))
            walls_g, cpus_g, walls_s, cpus_s = [], [], [], []
            for i in range(a.rounds):  # interleaved, so load hits both alike
                w, c = _timed(lambda i=i, g=gen: g._refresh(eparams, jnp.asarray(i + 1, jnp.int32)),
                              1)
                walls_g.append(w)
                cpus_g.append(c)
                w, c = _timed(lambda b=batch: step(state, b), 1)
                walls_s.append(w)
                cpus_s.append(c)
            g_w, g_c = np.median(walls_g) / refresh, np.median(cpus_g) / refresh
            s_w, s_c = np.median(walls_s), np.median(cpus_s)
            row.update({"generator_s_per_step": float(g_w),
                        "classifier_s_per_step": float(s_w),
                        "generator_share_wall": float(g_w / (g_w + s_w)),
                        "generator_share_cpu": float(g_c / (g_c + s_c))})
            rows.append(row)
            print(json.dumps(row), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"devices": distributed.describe(mesh), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
