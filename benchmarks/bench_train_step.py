"""Train-step throughput (images/s) of the classifier step, against a named peer in the same run.

    python benchmarks/bench_train_step.py [--models preact_resnet18,preact_resnet_tiny]
        [--batch 128] [--size 32] [--steps 5] [--peer nodonate|bf16] [--json OUT]

For each model it times ``augdiff.train.classifier.make_train_step`` (SGD momentum, crop+flip
on device, CE loss; jitted once, state donated, batch sharded over every device) and the
*peer*: by default the identical step compiled without buffer donation (``nodonate``), or
with bf16 compute (``bf16``, params stay fp32). Both are measured in the same process,
interleaved round by round, so machine load affects them alike; the ratio is
``images/s (augdiff step) / images/s (peer)``. Wall images/s and CPU-seconds per image
(process time, robust to other load on a shared machine) are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from augdiff import distributed
from augdiff.models.classifiers import get_classifier, param_count
from augdiff.train.classifier import (
    create_train_state,
    learning_rate_fn,
    make_optimizer,
    make_train_step,
    state_sharding,
)


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def build(name: str, batch: int, size: int, dtype, donate: bool, mesh):
    optim = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
             "schedule": "cosine"}
    lr_fn = learning_rate_fn(optim, steps_per_epoch=100, epochs=10)
    tx = make_optimizer(optim, lr_fn)
    model = get_classifier(name, 10, dtype=dtype)
    state = create_train_state(jax.random.PRNGKey(0), model, tx, (size, size, 3))
    state = jax.device_put(state, state_sharding(state, mesh))
    step = make_train_step(model, tx, mesh, state, num_classes=10, loss_kind="ce",
                           augment={"crop_flip": True}, lr_fn=lr_fn, donate=donate)
    rng = np.random.default_rng(0)
    batch_np = {
        "image": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
        "label": rng.integers(0, 10, batch).astype(np.int32),
        "weight": np.ones(batch, np.float32),
        "source": np.zeros(batch, np.int32),
    }
    return state, step, distributed.shard_batch(batch_np, mesh), param_count(state.params)


def bench(name: str, batch: int, size: int, steps: int, peer: str, mesh) -> dict:
    variants = {"augdiff": dict(dtype=jnp.float32, donate=True)}
    variants["peer"] = (dict(dtype=jnp.float32, donate=False) if peer == "nodonate"
                        else dict(dtype=jnp.bfloat16, donate=True))
    runs = {}
    for key, kw in variants.items():
        state, step, b, n_params = build(name, batch, size, mesh=mesh, **kw)
        t0 = time.perf_counter()
        state, m = step(state, b)  # compile + first step
        jax.block_until_ready(m)
        runs[key] = dict(state=state, step=step, batch=b, compile_s=time.perf_counter() - t0,
                         wall=0.0, cpu=0.0, n_params=n_params)
    for _ in range(steps):  # interleave so load changes hit both alike
        for r in runs.values():
            w0, c0 = time.perf_counter(), _cpu_seconds()
            r["state"], m = r["step"](r["state"], r["batch"])
            jax.block_until_ready(m)
            r["wall"] += time.perf_counter() - w0
            r["cpu"] += _cpu_seconds() - c0
    out = {"model": name, "batch": batch, "image_size": size, "timed_steps": steps,
           "params": runs["augdiff"]["n_params"], "peer": peer}
    for key, r in runs.items():
        out[key] = {
            "images_per_s": steps * batch / r["wall"],
            "cpu_ms_per_image": 1e3 * r["cpu"] / (steps * batch),
            "compile_s": r["compile_s"],
        }
    out["ratio_vs_peer"] = out["augdiff"]["images_per_s"] / out["peer"]["images_per_s"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="preact_resnet18,preact_resnet_tiny")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--peer", choices=("nodonate", "bf16"), default="nodonate")
    p.add_argument("--json", default="")
    args = p.parse_args()
    distributed.enable_compilation_cache()
    mesh = distributed.make_mesh()
    machine = {"platform": platform.platform(), "cpu_count": os.cpu_count(),
               "load_avg_1m": os.getloadavg()[0], "backend": jax.default_backend(),
               "devices": jax.device_count(), "jax": jax.__version__}
    results = []
    for name in args.models.split(","):
        r = bench(name.strip(), args.batch, args.size, args.steps, args.peer, mesh)
        results.append(r)
        peer_desc = ("same step without buffer donation" if args.peer == "nodonate"
                     else "same step, bf16 compute")
        print(f"{r['model']:>20s} batch {r['batch']} {r['image_size']}²: "
              f"{r['augdiff']['images_per_s']:8.1f} img/s "
              f"({r['augdiff']['cpu_ms_per_image']:.2f} CPU-ms/img, compile "
              f"{r['augdiff']['compile_s']:.1f} s); peer [{peer_desc}] "
              f"{r['peer']['images_per_s']:8.1f} img/s; ratio {r['ratio_vs_peer']:.2f}",
              flush=True)
    machine["load_avg_1m_end"] = os.getloadavg()[0]
    print(json.dumps({"machine": machine}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
