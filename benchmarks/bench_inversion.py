"""Diffusion Inversion throughput: stage-1 seconds per vector and stage-2 images per second.

    python benchmarks/bench_inversion.py [--model DIR] [--resolution 128] [--batch 8]

Stage 1: wall time of ``--stage1-steps`` optimisation steps on ``--batch`` images at once (after
a compile/warm-up call), reported per step and amortised per vector over the paper's 3K steps:
``s/vector = s/step × 3000 / batch``. Stage 2: ``--stage2-batch`` images sampled with per-row
CFG (mean-vector unconditional input) over ``--stage2-steps`` PNDM steps (SD-1.4's default;
N + 1 UNet evaluations), images / s after a warm-up call. Without ``--model`` a tiny
random-weight SD is made (its VAE down-samples by 2,
so 128² images are 64² latents, 16x the latent area of SD-1.x at 128²).
Seed 003 reports 18.8 s per vector (3K steps) and 0.20 s per 128² image (100 steps) on an A40.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from augdiff import distributed
from augdiff.methods import diffinv
from augdiff.methods import inversion as inv
from augdiff.sd import loading, pipelines, tiny

PAPER = {"stage1_s_per_vector": 18.8, "stage2_s_per_image": 0.20, "device": "A40"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="", help="diffusers SD folder (default: tiny random)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8, help="images inverted at once")
    ap.add_argument("--stage1-steps", type=int, default=5)
    ap.add_argument("--stage2-batch", type=int, default=4)
    ap.add_argument("--stage2-steps", type=int, default=100)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    distributed.enable_compilation_cache()

    path = args.model
    if not path:
        path = os.path.join(tempfile.mkdtemp(prefix="bench_inv_"), "tiny")
        tiny.make_tiny_sd(path, kind="txt2img", formats=("flax",))
    comps, params = loading.load_sd(path, dtype=args.dtype, kind="txt2img")
    mesh = distributed.make_mesh(devices=jax.local_devices())
    lat_shape = pipelines.latent_shape(comps, args.resolution, args.resolution)
    rng = np.random.default_rng(0)
    lat = jnp.asarray(rng.standard_normal((args.batch, *lat_shape)), jnp.float32)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(0), i))(jnp.arange(args.batch))
    init = inv.initial_vectors(
        comps, params, [0] * args.batch, num_tokens=5, key=jax.random.PRNGKey(2)
    )
    kw = dict(mesh=mesh, progress=False)

    inv.invert(comps, params, lat, keys, init, num_steps=1, chunk=1, **kw)  # compile
    t0 = time.perf_counter()
    inv.invert(
        comps, params, lat, keys, init, num_steps=args.stage1_steps, chunk=args.stage1_steps, **kw
    )
    s_step = (time.perf_counter() - t0) / args.stage1_steps

    cond = jnp.asarray(
        init[: args.stage2_batch] + 0.1 * rng.standard_normal(init[: args.stage2_batch].shape)
    )
    ubar = diffinv.unconditional_vector(cond)
    w = np.resize(np.array([2.0, 3.0, 4.0], np.float32), args.stage2_batch)
    skw = dict(
        num_steps=args.stage2_steps, height=args.resolution, width=args.resolution, mesh=mesh
    )
    diffinv.sample(comps, params, cond, ubar, w, keys[: args.stage2_batch], **skw)  # compile
    t0 = time.perf_counter()
    diffinv.sample(comps, params, cond, ubar, w, keys[: args.stage2_batch], **skw)
    s_img = (time.perf_counter() - t0) / args.stage2_batch

    result = {
        "device": f"{jax.device_count()}x {jax.devices()[0].device_kind}",
        "model": loading.model_label(comps),
        "dtype": args.dtype,
        "resolution": args.resolution,
        "latent_shape": list(lat_shape),
        "stage1_batch": args.batch,
        "stage1_s_per_step": round(s_step, 4),
        "stage1_s_per_vector_3k_steps": round(s_step * 3000 / args.batch, 2),
        "stage2_batch": args.stage2_batch,
        "stage2_steps": args.stage2_steps,
        "stage2_s_per_image": round(s_img, 3),
        "stage2_images_per_s": round(1.0 / s_img, 3),
        "paper_seed003": PAPER,
    }
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
