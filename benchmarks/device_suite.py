"""The accelerator run: augdiff (bf16) against its PyTorch peers on the same GPU, one table.

    bash benchmarks/device_suite.sh OUT_DIR [--dry-run] [--edm-repo DIR] [--rows a,b,...]

Rows (real-size models of :mod:`zoo`, random weights, the same weights on both sides):

===================  ===========================================================================
``sd15-512-ddim50``  SD-1.5 txt2img 512², DDIM-50, CFG w = 7.5, VAE decode: augdiff's sampler
                     (one jit, bf16) vs diffusers' PyTorch ``StableDiffusionPipeline`` (fp16,
                     SDPA attention) fed the same prompt embeddings.
``sd15-128-100``     The same at 128² with 100 steps (Diffusion Inversion's stage-2 setting).
``inversion-128``    Diffusion Inversion stage-1 step for a batch at 128²: forward + backward
                     through the frozen UNet into the conditioning vectors + AdamW, vs the same
                     step written here in PyTorch (fp16 UNet, fp32 vectors).
``edm-heun35``       EDM DDPM++ CIFAR-10, Heun 18 steps (NFE 35): augdiff vs NVlabs/edm's
                     ``edm_sampler`` on ``EDMPrecond(use_fp16=True)`` (needs ``--edm-repo``, a
                     checkout of the public NVlabs/edm repository kept outside the project;
                     without it the row has no peer).
``preact18-train``   PreActResNet18 train step, batch 128, 32², crop/flip on device, SGD:
                     augdiff's step (bf16 compute) vs a PyTorch step (bf16 autocast,
                     channels-last) with the same architecture.
===================  ===========================================================================

Each row reports images/s of both sides (median of the timed repeats, after a warm-up call
that also compiles), the ratio augdiff / peer, and augdiff's compile time. Everything is
written to ``OUT_DIR/device_suite.json`` and ``OUT_DIR/device_suite.md``; a row that fails
records its error and the others still run. ``--dry-run`` runs the same code on the CPU with
the tiny models (fp32 peers, a couple of steps): it checks that the suite still works, its
figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import steps as S  # noqa: E402
import zoo  # noqa: E402
from machine import describe, headline  # noqa: E402

ROWS = ("sd15-512-ddim50", "sd15-128-100", "inversion-128", "edm-heun35", "preact18-train")


class Ctx:
    """Sizes, devices and the shared SD-1.5 weights of one suite run."""

    def __init__(self, dry: bool, edm_repo: str | None):
        import torch

        self.dry = dry
        self.edm_repo = edm_repo
        self.torch = torch
        self.dev = "cuda" if (torch.cuda.is_available() and not dry) else "cpu"
        self.tdtype = torch.float16 if self.dev == "cuda" else torch.float32
        self.jdtype = jnp.bfloat16
        self.repeats = 1 if dry else 3
        self._sd: Any = None

    def sync(self) -> None:
        if self.dev == "cuda":
            self.torch.cuda.synchronize()

    def sd(self) -> tuple[Any, dict, dict]:
        """(components, JAX params, torch modules) of SD-1.5 (tiny in a dry run), same weights."""
        if self._sd is None:
            torch = self.torch
            built = {n: zoo.build(n, tiny=self.dry, dtype=self.jdtype)
                     for n in ("sd15-unet", "sd15-vae", "sd15-text")}
            peers = {}
            trees = {}
            for n, b in built.items():
                torch.manual_seed(0)
                with torch.device(self.dev):
                    peer = zoo.torch_peer(n, tiny=self.dry)
                trees[n] = zoo.flax_params_from_torch(b, peer)
                peers[n] = peer.to(self.tdtype).requires_grad_(False)
            comps = zoo.sd_components(built["sd15-unet"], built["sd15-vae"], built["sd15-text"],
                                      self.jdtype)
            params = zoo.sd_params(trees["sd15-unet"], trees["sd15-vae"], trees["sd15-text"])
            params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, self.jdtype), params)
            self._sd = (comps, params, peers)
        return self._sd


def _median_time(fn: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> float:
    walls = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        walls.append(time.perf_counter() - t0)
    return float(np.median(walls))


def _compare(ctx: Ctx, jax_fn: Callable[[], Any], torch_fn: Callable[[], Any] | None,
             batch: int) -> dict[str, Any]:
    """Warm-up (compile) + timed repeats of both sides; images/s and the ratio."""
    def jrun():
        jax.block_until_ready(jax_fn())

    t0 = time.perf_counter()
    jrun()
    out: dict[str, Any] = {"augdiff_first_call_s": time.perf_counter() - t0, "batch": batch}
    sec = _median_time(jrun, ctx.repeats, lambda: None)
    out["augdiff_img_per_s"] = batch / sec
    if torch_fn is not None:
        torch_fn()
        tsec = _median_time(torch_fn, ctx.repeats, ctx.sync)
        out["peer_img_per_s"] = batch / tsec
        out["ratio"] = out["augdiff_img_per_s"] / out["peer_img_per_s"]
    return out


def row_sd(ctx: Ctx, size: int, num_steps: int, batch: int) -> dict[str, Any]:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from augdiff.sd import pipelines

    torch = ctx.torch
    comps, params, peers = ctx.sd()
    d = int(comps.unet.cross_attention_dim)
    rng = np.random.default_rng(0)
    cond = rng.standard_normal((batch, 77, d)).astype(np.float32)
    uncond = rng.standard_normal((batch, 77, d)).astype(np.float32)
    cond_j, uncond_j = jnp.asarray(cond), jnp.asarray(uncond)

    def jax_fn():
        return pipelines.generate_from_embeddings(
            comps, params, cond_j, jax.random.PRNGKey(0), uncond=uncond_j, guidance_scale=7.5,
            num_steps=num_steps, height=size, width=size)

    sched = DDIMScheduler(**{k: v for k, v in comps.scheduler_config.items()
                             if not k.startswith("_")})
    pipe = StableDiffusionPipeline(vae=peers["sd15-vae"], text_encoder=peers["sd15-text"],
                                   tokenizer=None, unet=peers["sd15-unet"], scheduler=sched,
                                   safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    ct = torch.from_numpy(cond).to(ctx.dev, ctx.tdtype)
    ut = torch.from_numpy(uncond).to(ctx.dev, ctx.tdtype)

    def torch_fn():
        with torch.no_grad():
            return pipe(prompt_embeds=ct, negative_prompt_embeds=ut, height=size, width=size,
                        num_inference_steps=num_steps, guidance_scale=7.5, output_type="np",
                        generator=torch.Generator(ctx.dev).manual_seed(0)).images

    out = _compare(ctx, jax_fn, torch_fn, batch)
    out.update(what=f"SD-1.5 {size}² DDIM-{num_steps} CFG + decode",
               peer="diffusers StableDiffusionPipeline " + str(ctx.tdtype).split(".")[-1]
               + " SDPA")
    return out


def row_inversion(ctx: Ctx, size: int, batch: int) -> dict[str, Any]:
    torch = ctx.torch
    comps, params, peers = ctx.sd()
    lat = size // comps.vae_scale_factor
    step = S.inversion_step(comps, params, batch, lat)
    state = list(step.args)

    def jax_fn():
        state[1], state[2], loss = step.fn(*state)
        return loss

    unet = peers["sd15-unet"]
    d = int(comps.unet.cross_attention_dim)
    cvec = torch.nn.Parameter(torch.empty(batch, 5, d, device=ctx.dev).uniform_(-0.1, 0.1))
    opt = torch.optim.AdamW([cvec], lr=0.03, weight_decay=1e-2)
    z0 = torch.randn(batch, 4, lat, lat, device=ctx.dev)
    abar = torch.linspace(0.9991, 0.0047, 1000, device=ctx.dev)

    def torch_fn():
        t = torch.randint(0, 1000, (batch,), device=ctx.dev)
        eps = torch.randn_like(z0)
        a = abar[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * z0 + (1 - a).sqrt() * eps
        pred = unet(x_t.to(ctx.tdtype), t, encoder_hidden_states=cvec.to(ctx.tdtype)).sample
        loss = ((pred.float() - eps) ** 2).mean(dim=(1, 2, 3)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    out = _compare(ctx, jax_fn, torch_fn, batch)
    out.update(what=f"Diffusion Inversion stage-1 step, {size}², batch {batch}",
               peer="the same step in PyTorch (diffusers UNet " + str(ctx.tdtype).split(".")[-1]
               + ", SDPA)")
    return out


def _edm_torch_net(edm_dir: str, cfg: dict, use_fp16: bool):
    sys.path.insert(0, edm_dir)
    from training.networks import EDMPrecond

    return EDMPrecond(img_resolution=cfg["img_resolution"], img_channels=3, label_dim=0,
                      model_type="SongUNet", embedding_type="positional",
                      encoder_type="standard", decoder_type="standard", channel_mult_noise=1,
                      resample_filter=[1, 1], model_channels=cfg["model_channels"],
                      channel_mult=list(cfg["channel_mult"]), num_blocks=cfg["num_blocks"],
                      attn_resolutions=list(cfg["attn_resolutions"]),
                      augment_dim=cfg["augment_dim"], dropout=0.0, use_fp16=use_fp16)


def row_edm(ctx: Ctx, batch: int) -> dict[str, Any]:
    torch = ctx.torch
    built = zoo.build("edm-ddpmpp-cifar10", tiny=ctx.dry, dtype=ctx.jdtype)
    cfg = built.config
    res = int(cfg["img_resolution"])
    num_steps = 2 if ctx.dry else 18
    torch_fn = None
    if ctx.edm_repo:
        from bench_edm import export_edm

        from augdiff.models.songunet import params_from_edm_state_dict

        edm_dir = export_edm(ctx.edm_repo)
        torch.manual_seed(0)
        net = _edm_torch_net(edm_dir, cfg, use_fp16=ctx.dev == "cuda").to(ctx.dev).eval()
        params = params_from_edm_state_dict(
            {k: v.detach().float().cpu().numpy() for k, v in net.state_dict().items()})
        from generate import edm_sampler

        latents = torch.randn([batch, 3, res, res], device=ctx.dev)

        def torch_fn():
            with torch.no_grad():
                return edm_sampler(net, latents, num_steps=num_steps)
    else:
        params = built.init(jax.random.PRNGKey(0))
    step = S.edm_heun(built.module, params, batch, res, num_steps)
    out = _compare(ctx, lambda: step.fn(*step.args), torch_fn, batch)
    out.update(what=f"EDM DDPM++ Heun-{2 * num_steps - 1}, {res}², batch {batch}",
               peer="NVlabs/edm edm_sampler, EDMPrecond(use_fp16)" if ctx.edm_repo else
               "none (no --edm-repo)")
    return out


def row_preact(ctx: Ctx, batch: int) -> dict[str, Any]:
    import torch.nn.functional as F
    from bench_train_step import torch_preact_resnet18

    torch = ctx.torch
    built = zoo.build("preact_resnet18", tiny=ctx.dry, dtype=ctx.jdtype)
    step = S.classifier_train(built, batch, abstract=False)
    state = list(step.args)

    def jax_fn():
        state[0], m = step.fn(state[0], state[1])
        return m["loss"]

    net = torch_preact_resnet18(int(built.config["width"])).to(ctx.dev)
    net = net.to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (batch, 3, 32, 32), dtype=np.uint8))
    images = images.to(ctx.dev)
    labels = torch.from_numpy(rng.integers(0, 10, batch).astype(np.int64)).to(ctx.dev)
    ar = torch.arange(32, device=ctx.dev)
    bidx = torch.arange(batch, device=ctx.dev)[:, None, None]
    autocast = torch.autocast(ctx.dev, dtype=torch.bfloat16, enabled=ctx.dev == "cuda")

    def torch_fn():
        x = F.pad(images.float() / 127.5 - 1.0, (4, 4, 4, 4), value=-1.0)
        off = torch.randint(0, 9, (batch, 2), device=ctx.dev)
        rows = (off[:, 0, None] + ar)[:, :, None]
        cols = (off[:, 1, None] + ar)
        flip = torch.rand(batch, device=ctx.dev) < 0.5
        cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, :]
        crops = x.permute(0, 2, 3, 1)[bidx, rows, cols].permute(0, 3, 1, 2)
        crops = crops.contiguous(memory_format=torch.channels_last)
        with autocast:
            loss = F.cross_entropy(net(crops), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    out = _compare(ctx, jax_fn, torch_fn, batch)
    out.update(what=f"PreActResNet18 train step, 32², batch {batch}",
               peer="PyTorch step (bf16 autocast, channels-last)" if ctx.dev == "cuda" else
               "PyTorch step (fp32)")
    return out


def run_row(ctx: Ctx, name: str) -> dict[str, Any]:
    dry = ctx.dry
    if name == "sd15-512-ddim50":
        return row_sd(ctx, 32 if dry else 512, 2 if dry else 50, 1 if dry else 4)
    if name == "sd15-128-100":
        return row_sd(ctx, 32 if dry else 128, 2 if dry else 100, 1 if dry else 16)
    if name == "inversion-128":
        return row_inversion(ctx, 32 if dry else 128, 2 if dry else 8)
    if name == "edm-heun35":
        return row_edm(ctx, 2 if dry else 128)
    if name == "preact18-train":
        return row_preact(ctx, 8 if dry else 128)
    raise ValueError(f"unknown row {name!r}; choose from {ROWS}")


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"Device: {m.get('devices', ['?'])[0]} ({m.get('backend')}); jax {m.get('jax')}, "
             f"torch {m.get('torch')}, diffusers {m.get('diffusers')}"
             + ("; DRY RUN (tiny models on the CPU: the figures mean nothing)"
                if result["dry_run"] else ""), "",
             "| row | what | augdiff img/s | peer | peer img/s | augdiff / peer | "
             "augdiff first call (compile) s |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in result["rows"].items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | | | | | |")
            continue
        peer = r.get("peer_img_per_s")
        lines.append(
            f"| {name} | {r['what']} | {r['augdiff_img_per_s']:.3g} | {r['peer']} | "
            + (f"{peer:.3g} | **{r['ratio']:.2f}×** | " if peer else "— | — | ")
            + f"{r['augdiff_first_call_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--dry-run", action="store_true", help="tiny models on the CPU")
    ap.add_argument("--edm-repo", default=os.environ.get("AUGDIFF_EDM_REPO"),
                    help="NVlabs/edm checkout (default: $AUGDIFF_EDM_REPO)")
    ap.add_argument("--rows", default=",".join(ROWS))
    args = ap.parse_args(argv)
    if args.dry_run:
        jax.config.update("jax_platforms", "cpu")
    from augdiff import distributed

    distributed.enable_compilation_cache()
    os.makedirs(args.out_dir, exist_ok=True)
    ctx = Ctx(args.dry_run, args.edm_repo)
    machine = describe()
    print(headline(machine), flush=True)
    result: dict[str, Any] = {"dry_run": args.dry_run, "machine": machine, "rows": {},
                              "torch_device": ctx.dev, "jax_dtype": "bfloat16",
                              "torch_dtype": str(ctx.tdtype)}
    t_all = time.perf_counter()
    for name in [r.strip() for r in args.rows.split(",") if r.strip()]:
        t0 = time.perf_counter()
        try:
            r = run_row(ctx, name)
        except Exception as e:  # noqa: BLE001 (one failed row must not lose the others)
            traceback.print_exc()
            r = {"error": f"{type(e).__name__}: {e}"[:300]}
        r["row_wall_s"] = time.perf_counter() - t0
        result["rows"][name] = r
        print(name, json.dumps(r), flush=True)
        result["total_wall_s"] = time.perf_counter() - t_all
        with open(os.path.join(args.out_dir, "device_suite.json"), "w") as f:
            json.dump(result, f, indent=1)
        with open(os.path.join(args.out_dir, "device_suite.md"), "w") as f:
            f.write(markdown(result))
    print(markdown(result))
    return 1 if any("error" in r for r in result["rows"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
