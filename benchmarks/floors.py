"""FLOP and memory floors from XLA for every real-size step, and what they mean on an H100/H200.

    python benchmarks/floors.py [--only NAME,...] [--json OUT.json] [--md OUT.md] [--tiny]

Each step of :mod:`steps` is lowered with ``jax.ShapeDtypeStruct`` arguments (the real-size
models of :mod:`zoo`, bf16 compute, float32 weights as augdiff keeps them; nothing is
allocated) and compiled for the backend at hand (the CPU here). From the compiled executable:
FLOPs (``cost_analysis()``) and peak memory (``memory_analysis()``). The compute floor is
FLOPs / the dense bf16 tensor-core peak of the datasheet (989.4 TFLOPS for both the H100 SXM
and the H200 SXM); the largest batch is the linear extrapolation of :func:`steps.floors`
into 80 GB / 141 GB. CPU-compiled memory is an estimate of the GPU's: XLA:GPU fuses and
schedules differently, so treat the batch limits as ±30 %.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import steps as S  # noqa: E402
import zoo  # noqa: E402


def all_steps(tiny: bool = False, only: set[str] | None = None):
    """``(row name, unit of work, builder)`` for every row of the floors table."""
    dt = jnp.bfloat16
    cache: dict[str, zoo.Built] = {}

    def b(name):
        if name not in cache:
            cache[name] = zoo.build(name, tiny=tiny, dtype=dt)
        return cache[name]

    def sd(unet_name):
        u, v, t = b(unet_name), b("sd15-vae"), b("sd15-text")
        if unet_name == "sd21-unclip-unet" and not tiny:
            # unCLIP pairs its 1024-wide UNet with the SD-2 (OpenCLIP ViT-H) text encoder;
            # only the UNet is measured here, so the text tower is not built.
            t = zoo.Built("none", None, {}, {"hidden_size": 1024}, "text")
        return zoo.sd_components(u, v, t, dt), zoo.sd_params(u.abstract, v.abstract, t.abstract)

    lat = (lambda n: max(2, n // 8)) if not tiny else (lambda n: max(2, n // 16))
    rows = [
        (
            "sd15 UNet CFG step, 512² (64² latents)",
            "DDIM-50 CFG image",
            lambda: S.sd_cfg_step(*sd("sd15-unet"), batch=4, latent=lat(512)),
            50,
        ),
        (
            "sd15 UNet CFG step, 128² (16² latents)",
            "100-step CFG image",
            lambda: S.sd_cfg_step(*sd("sd15-unet"), batch=16, latent=lat(128)),
            100,
        ),
        (
            "sd15 VAE decode 512²",
            "image",
            lambda: S.vae_decode(*sd("sd15-unet"), batch=4, latent=lat(512)),
            1,
        ),
        (
            "sd15 VAE decode 128²",
            "image",
            lambda: S.vae_decode(*sd("sd15-unet"), batch=16, latent=lat(128)),
            1,
        ),
        (
            "CLIP ViT-L/14 text encode, 77 tokens",
            "prompt",
            lambda: S.text_encode(*sd("sd15-unet"), batch=8, vocab=1000 if tiny else 49408),
            1,
        ),
        (
            "Diffusion Inversion stage-1 step, 128²",
            "image-step",
            lambda: S.inversion_step(*sd("sd15-unet"), batch=8, latent=lat(128)),
            1,
        ),
        (
            "SD-2.1 unCLIP UNet CFG step, 768² (96² latents)",
            "DDIM-50 CFG image",
            lambda: S.sd_cfg_step(*sd("sd21-unclip-unet"), batch=2, latent=lat(768)),
            50,
        ),
        (
            "InstructPix2Pix UNet step (3 branches), 256²",
            "10-step edit",
            lambda: S.sd_cfg_step(*sd("ip2p-unet"), batch=8, latent=lat(256)),
            10,
        ),
        (
            "EDM DDPM++ denoiser call, 32²",
            "Heun-35 image",
            lambda: S.edm_denoise(
                b("edm-ddpmpp-cifar10").module,
                b("edm-ddpmpp-cifar10").abstract,
                batch=128,
                res=b("edm-ddpmpp-cifar10").config["img_resolution"],
            ),
            35,
        ),
        (
            "EDM DDPM++ train step (loss + Adam), 32²",
            "image",
            lambda: S.edm_train(
                b("edm-ddpmpp-cifar10").module,
                b("edm-ddpmpp-cifar10").abstract,
                batch=128,
                res=b("edm-ddpmpp-cifar10").config["img_resolution"],
            ),
            1,
        ),
        (
            "PreActResNet18 train step, 32²",
            "image",
            lambda: S.classifier_train(b("preact_resnet18"), batch=128, abstract=True),
            1,
        ),
        (
            "ResNet-50 train step, 32²",
            "image",
            lambda: S.classifier_train(b("resnet50"), batch=128, abstract=True),
            1,
        ),
    ]
    for name, unit, make, calls in rows:
        if only and not any(o in name for o in only):
            continue
        yield name, unit, make, calls


def markdown(results: list[dict]) -> str:
    gpus = list(S.PEAK_BF16_FLOPS)
    head = (
        "| step | batch | GFLOP / call | unit of work | GFLOP / unit | peak GiB (CPU-compiled) "
        + "".join(f"| floor ms / unit, {g} " for g in gpus)
        + "".join(f"| max batch, {g.split(' (')[1][:-1]} " for g in gpus)
        + "|"
    )
    lines = [head, "|" + " --- |" * (6 + 2 * len(gpus))]
    for r in results:
        unit_gflop = r["gflop_per_call"] * r["calls"] / r["batch"]
        lines.append(
            f"| {r['row']} | {r['batch']} | {r['gflop_per_call']:,.4g} | {r['unit']} | "
            f"{unit_gflop:,.4g} | {r['peak_gib']:.3g} "
            + "".join(f"| {r[f'floor_ms_per_unit[{g}]']:.3g} " for g in gpus)
            + "".join(f"| {r[f'max_batch[{g}]']:,} " for g in gpus)
            + "|"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="comma-separated substrings of row names")
    ap.add_argument("--tiny", action="store_true", help="tiny models (a quick check)")
    ap.add_argument("--json", default="")
    ap.add_argument("--md", default="")
    args = ap.parse_args(argv)
    only = {o.strip() for o in args.only.split(",") if o.strip()} or None
    results = []
    for name, unit, make, calls in all_steps(args.tiny, only):
        t0 = time.perf_counter()
        step = make()
        step.calls = calls
        r = S.floors(step)
        r.update(row=name, unit=unit, wall_s=time.perf_counter() - t0)
        results.append(r)
        print(json.dumps(r), flush=True)
        if args.json:  # written after every row: a cut run keeps what it measured
            with open(args.json, "w") as f:
                json.dump({"backend": jax.default_backend(), "rows": results}, f, indent=1)
    md = markdown(results)
    print(md)
    if args.md:
        with open(args.md, "w") as f:
            f.write(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
