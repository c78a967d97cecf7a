"""Tiny-SD speed on this CPU: Flax/JAX pipelines vs diffusers' PyTorch pipelines.

Same tiny random model (PyTorch weights converted to Flax), same batch, resolution, sampler
(DDIM) and number of steps, CFG on. Reports images/s of the whole text2img pipeline (warm,
compile excluded and reported separately) and seconds per UNet step (one guided UNet call on
the 2B batch), and the JAX/PyTorch ratios.

    python benchmarks/bench_sd.py [--batch 4] [--steps 10] [--size 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline

    from augdiff.sd import loading, pipelines, tiny

    path = tiny.make_tiny_sd(tempfile.mkdtemp(prefix="bench_sd_"), formats=("pytorch",))
    comps, params = loading.load_sd(path, weights="pytorch")
    prompts = ["a photo of a cat"] * args.batch
    f = comps.vae_scale_factor
    lat = np.random.default_rng(0).standard_normal((args.batch, 4, args.size // f, args.size // f))
    lat = lat.astype(np.float32)
    cond = pipelines.encode_prompts(comps, params, prompts)

    def jax_run():
        out = pipelines.generate_from_embeddings(
            comps,
            params,
            cond,
            jax.random.PRNGKey(0),
            guidance_scale=7.5,
            num_steps=args.steps,
            sampler="ddim",
            latents=lat,
            height=args.size,
            width=args.size,
        )
        return np.asarray(out)

    t0 = time.perf_counter()
    jax_run()
    jax_compile = time.perf_counter() - t0
    jax_pipe = _best(jax_run, args.repeats)

    unet = jax.jit(pipelines.unet_output, static_argnums=0)
    x2 = jnp.concatenate([jnp.asarray(lat)] * 2)
    c2 = jnp.concatenate([cond] * 2)
    t = jnp.asarray(500)
    unet(comps, params, x2, t, c2).block_until_ready()
    jax_step = _best(lambda: unet(comps, params, x2, t, c2).block_until_ready(), args.repeats * 3)

    torch.set_grad_enabled(False)
    pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)

    def torch_run():
        return pipe(
            prompts,
            num_inference_steps=args.steps,
            guidance_scale=7.5,
            latents=torch.from_numpy(lat),
            height=args.size,
            width=args.size,
            output_type="np",
        ).images

    torch_run()
    torch_pipe = _best(torch_run, args.repeats)
    tx2 = torch.from_numpy(np.array(x2))
    tc2 = torch.from_numpy(np.array(c2))
    pipe.unet(tx2, 500, tc2)
    torch_step = _best(lambda: pipe.unet(tx2, 500, tc2), args.repeats * 3)

    print(
        f"devices: {jax.device_count()} x {jax.devices()[0].platform}; torch threads "
        f"{torch.get_num_threads()}; batch {args.batch}, {args.size}^2, "
        f"{args.steps} DDIM steps, CFG"
    )
    print(
        f"JAX   : {args.batch / jax_pipe:8.2f} images/s  {jax_step * 1e3:8.2f} ms/UNet step "
        f"(first call incl. compile {jax_compile:.1f} s)"
    )
    print(f"torch : {args.batch / torch_pipe:8.2f} images/s  {torch_step * 1e3:8.2f} ms/UNet step")
    print(
        f"ratio JAX/torch: images/s x{torch_pipe / jax_pipe:.2f}, "
        f"UNet step speed x{torch_step / jax_step:.2f}"
    )


if __name__ == "__main__":
    main()
