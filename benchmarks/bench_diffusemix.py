"""DiffuseMix throughput: InstructPix2Pix edits/s, and online hybrids per batch vs a train step.

    python benchmarks/bench_diffusemix.py [--batch 8] [--resolution 32] [--steps 10]
                                          [--iters 3] [--train-batch 128] [--json out]

1. **Edits/s**: :func:`augdiff.methods.edits.edit_images` (one jit: VAE encode of the
   inputs, the whole Euler-ancestral loop with InstructPix2Pix's three-way guidance, VAE
   decode) on a tiny random-weight InstructPix2Pix (:func:`augdiff.sd.tiny.make_tiny_sd`), or
   on ``--model DIR`` (any diffusers-format InstructPix2Pix folder, e.g. SD-1.5 sized).
   Reported per image and per image-step (``steps`` UNet calls of batch 3B each).
2. **Online transforms**: :class:`augdiff.methods.online.OnlinePairs` ``.device`` (the
   trainer's hook: concatenation or random masks redrawn per epoch, fractal blending with
   λ ~ U[α, β] and label scaling) per batch, next to the transforms of
   ``benchmarks/bench_transforms.py`` (SHB without CLIP) and one PreActResNet18 train step.

Inputs are random (values do not change the cost). Median wall times after compilation.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np


def _bench_transforms():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_transforms.py")
    spec = importlib.util.spec_from_file_location("bench_transforms", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def bench_edits(model: str | None, batch: int, resolution: int, steps: int, iters: int) -> dict:
    from augdiff import distributed
    from augdiff.data.store import example_keys
    from augdiff.methods import edits as E
    from augdiff.sd import loading, pipelines, tiny

    with tempfile.TemporaryDirectory() as tmp:
        path = model or tiny.make_tiny_sd(os.path.join(tmp, "ip2p"), kind="ip2p",
                                          formats=("flax",))
        comps, params = loading.load_sd(path, kind="ip2p")
    mesh = distributed.make_mesh(devices=jax.local_devices())
    params = pipelines.place_params(params, mesh)
    prompts = list(E.DIFFUSEMIX_PROMPTS)
    emb = pipelines.encode_prompts(comps, params, prompts)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
    edit_key = E.run_keys(0)[0]

    def run(i: int) -> np.ndarray:
        keys = example_keys(edit_key, range(i * batch, (i + 1) * batch))
        return E.edit_images(comps, params, images, emb[np.arange(batch) % len(prompts)], keys,
                              resolution=resolution, num_steps=steps, mesh=mesh)

    t0 = time.perf_counter()
    run(0)
    first = time.perf_counter() - t0
    times = []
    for i in range(iters):
        t = time.perf_counter()
        run(i + 1)
        times.append(time.perf_counter() - t)
    sec = float(np.median(times))
    return {"model": loading.model_label(comps), "batch": batch, "resolution": resolution,
            "steps": steps, "compile_s": first, "s_per_batch": sec, "edits_per_s": batch / sec,
            "image_steps_per_s": batch * steps / sec}


def bench_online(batch: int, size: int, iters: int) -> dict[str, float]:
    from augdiff.methods import hybrids as H
    from augdiff.methods import online as O

    bt = _bench_transforms()
    rng = np.random.default_rng(0)
    dev = {
        "image": jnp.asarray(rng.uniform(-1, 1, (batch, size, size, 3)), jnp.float32),
        "original": jnp.asarray(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)),
        "pair_id": jnp.arange(batch, dtype=jnp.int32),
        "source": jnp.asarray(np.arange(batch) % 2, jnp.int32),
        "weight": jnp.ones((batch,), jnp.float32),
    }
    bank = H.fractal_bank(jax.random.PRNGKey(2), 64, size)
    out = {}
    for name, spec, fr in (
        ("online hook: concat", H.DiffuseMixSpec(policy="online", fractal=False), None),
        ("online hook: random + fractal λ~U Lsf",
         H.DiffuseMixSpec(mask="random", policy="online", lam=(0.0, 0.4), label_scaling=True),
         bank),
    ):
        pairs = O.OnlinePairs(None, None, spec=spec, key=jax.random.PRNGKey(1), fractals=fr,
                              parents=np.zeros(1, np.int64), pair_ids=np.zeros(1, np.int64))
        fn = jax.jit(pairs.device)
        out[name] = bt.timeit(lambda fn=fn: fn(dev, 3)["image"], iters)[1]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="InstructPix2Pix folder (default: tiny random)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--train-batch", type=int, default=128)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--transform-iters", type=int, default=20)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    info = {"backend": jax.default_backend(), "devices": len(jax.devices()),
            "jax": jax.__version__, "machine": platform.processor() or platform.machine()}
    print(json.dumps(info))
    edits = bench_edits(args.model, args.batch, args.resolution, args.steps, args.iters)
    print(json.dumps({"edits": edits}))
    results = bench_online(args.train_batch, args.size, args.transform_iters)
    bt = _bench_transforms()
    peer_name = peer_ms = None
    if not args.skip_peer:
        peer_name, fn = bt.preact_peer(args.train_batch, args.size, args.width)
        peer_ms = bt.timeit(fn, 5)[1]
        results[peer_name] = peer_ms
    head = f"online transform (batch {args.train_batch} x {args.size}²)"
    print(f"\n{head:50s} {'ms':>9s} {'% of step':>10s}")
    for name, ms in results.items():
        share = "" if peer_ms is None or name == peer_name else f"{100 * ms / peer_ms:.3g}%"
        print(f"{name:50s} {ms:9.2f} {share:>10s}")
    print(f"\nInstructPix2Pix ({edits['model']}, {edits['resolution']}², {edits['steps']} steps, "
          f"batch {edits['batch']}): {edits['edits_per_s']:.3g} edits/s "
          f"({edits['image_steps_per_s']:.3g} image-steps/s; compile {edits['compile_s']:.1f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "edits": edits, "online_ms": results, "peer": peer_name},
                      f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
