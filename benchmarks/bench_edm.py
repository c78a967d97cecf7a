"""EDM DDPM++ (CIFAR-10, full size, random weights): augdiff (JAX/Flax) vs NVlabs/edm (PyTorch).

Measures, at the same batch on the same machine:

- Heun sampling images/s with 18 steps (EDM Algorithm 1, NFE = 35): augdiff's one-jit
  ``lax.fori_loop`` sampler vs the ``edm_sampler`` loop of NVlabs/edm ``generate.py``;
- training images/s of one EDM-loss + Adam step (dropout 0.13 on): augdiff's ``edm_loss`` +
  optax vs NVlabs/edm ``EDMLoss`` + ``torch.optim.Adam``.

Both frameworks run the *same* network: the PyTorch ``EDMPrecond(SongUNet)`` is built with
random weights and converted with :func:`augdiff.models.songunet.params_from_edm_state_dict`;
the script checks that one denoiser call agrees before timing.

NVlabs/edm is not part of augdiff and is never copied into it. Get its public repository
(``git clone https://github.com/NVlabs/edm``) anywhere outside the project and point
``--edm-repo`` at the checkout, or at its bare git directory, whose files are then exported
with ``git show`` into a temporary directory for this run only::

    python3 benchmarks/bench_edm.py --edm-repo <path to an NVlabs/edm checkout> --batch 8

Without ``--edm-repo`` only the JAX side runs (on random weights from ``eval_shape``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from machine import describe, headline

from augdiff.edm.core import EDMConfig, denoise, edm_loss
from augdiff.edm.samplers import nfe, sample
from augdiff.models.conv import wgrad_mode as conv_wgrad_mode
from augdiff.models.songunet import SongUNet, params_from_edm_state_dict, songunet_config

EDM_FILES = (
    "dnnlib/__init__.py", "dnnlib/util.py", "torch_utils/__init__.py",
    "torch_utils/distributed.py", "torch_utils/misc.py", "torch_utils/persistence.py",
    "torch_utils/training_stats.py", "training/__init__.py", "training/networks.py",
    "training/loss.py", "generate.py",
)


def export_edm(path: str) -> str:
    """A directory holding NVlabs/edm's sources: ``path`` itself if it is a checkout, else the
    files exported from the git directory ``path`` into a fresh temporary directory."""
    p = pathlib.Path(path)
    if (p / "training" / "networks.py").exists():
        return str(p)
    out = pathlib.Path(tempfile.mkdtemp(prefix="nvlabs-edm-"))
    for f in EDM_FILES:
        blob = subprocess.run(["git", f"--git-dir={p}", "show", f"HEAD:{f}"], check=True,
                              capture_output=True).stdout
        (out / f).parent.mkdir(parents=True, exist_ok=True)
        (out / f).write_bytes(blob)
    return str(out)


CPU_SECONDS: dict[str, float] = {}


def timed(fn, repeats: int, label: str) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` calls; the median CPU seconds of this
    process (all threads) go to ``CPU_SECONDS[label]``: on a shared machine the CPU time is
    the fairer basis for a ratio, since wall time also counts other users' load."""
    walls, cpus = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    CPU_SECONDS[label] = float(np.median(cpus))
    return float(np.median(walls))


def build_torch(edm_dir: str, dropout: float):
    sys.path.insert(0, edm_dir)
    import torch
    from training.networks import EDMPrecond

    torch.manual_seed(0)
    net = EDMPrecond(img_resolution=32, img_channels=3, label_dim=0, model_type="SongUNet",
                     embedding_type="positional", encoder_type="standard",
                     decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1],
                     model_channels=128, channel_mult=[2, 2, 2], augment_dim=9, dropout=dropout)
    # Zero-initialised output layers would make F ≈ 0; give every weight an O(1) gain instead.
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.ndim > 1:
                p.copy_(torch.randn_like(p) / np.sqrt(p[0].numel()))
            elif "norm" not in name:
                p.copy_(0.01 * torch.randn_like(p))
    return net


def bench_jax(args, params: Any, results: dict) -> Any:
    cfg = EDMConfig()
    model = SongUNet(**songunet_config("cifar10"))
    shape = (args.batch, 32, 32, 3)

    @jax.jit
    def draw(params, key):
        den = lambda x, s: denoise(model.apply, params, x, s)  # noqa: E731
        return sample(key, den, shape, args.steps, "heun", cfg)

    draw_c = None
    if not args.skip_sampling:
        t0 = time.perf_counter()
        draw_c = draw.lower(params, jax.random.key(0)).compile()
        results["jax_sample_compile_s"] = time.perf_counter() - t0
        sec = timed(lambda: jax.block_until_ready(draw_c(params, jax.random.key(1))), args.repeats,
                    "jax_sample")
        results["jax_sample_img_per_s"] = args.batch / sec
        print(f"[jax] Heun-{nfe('heun', args.steps)} sampling: {sec:.1f} s/batch "
              f"({args.batch / sec:.3f} img/s), compile {results['jax_sample_compile_s']:.0f} s",
              flush=True)

    opt = optax.adam(args.lr)
    opt_state = opt.init(params)

    @jax.jit
    def train_step(params, opt_state, key, x):
        k_loss, k_drop = jax.random.split(key)

        def loss_fn(p):
            per = edm_loss(k_loss, model.apply, p, x, None, cfg=cfg, train=True,
                           rngs={"dropout": k_drop})
            return per.mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    x = jax.random.uniform(jax.random.key(2), shape, minval=-1.0, maxval=1.0)
    t0 = time.perf_counter()
    step_c = train_step.lower(params, opt_state, jax.random.key(3), x).compile()
    results["jax_train_compile_s"] = time.perf_counter() - t0
    state = [params, opt_state]

    def one():
        state[0], state[1], loss = step_c(state[0], state[1], jax.random.key(4), x)
        jax.block_until_ready(loss)

    one()  # first call allocates
    sec = timed(one, args.train_repeats, "jax_train")
    results["jax_train_img_per_s"] = args.batch / sec
    print(f"[jax] train step (EDM loss + Adam): {sec:.2f} s/batch ({args.batch / sec:.2f} img/s),"
          f" compile {results['jax_train_compile_s']:.0f} s", flush=True)
    return draw_c


def bench_torch(args, net, results: dict) -> None:
    import torch
    from generate import edm_sampler
    from training.loss import EDMLoss

    net.eval()
    latents = torch.randn([args.batch, 3, 32, 32], generator=torch.Generator().manual_seed(1))

    def run_sampler():
        with torch.no_grad():
            edm_sampler(net, latents, num_steps=args.steps)

    if not args.skip_sampling:
        sec = timed(run_sampler, args.repeats, "torch_sample")
        results["torch_sample_img_per_s"] = args.batch / sec
        print(f"[torch] Heun-{nfe('heun', args.steps)} sampling: {sec:.1f} s/batch "
              f"({args.batch / sec:.3f} img/s)", flush=True)

    net.train()
    loss_fn = EDMLoss()
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    images = torch.rand([args.batch, 3, 32, 32]) * 2 - 1

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(net=net, images=images).mean().backward()
        opt.step()

    step()
    sec = timed(step, args.train_repeats, "torch_train")
    results["torch_train_img_per_s"] = args.batch / sec
    print(f"[torch] train step (EDMLoss + Adam): {sec:.2f} s/batch "
          f"({args.batch / sec:.2f} img/s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=18, help="Heun steps (NFE = 2N - 1)")
    ap.add_argument("--repeats", type=int, default=1, help="timed sampling runs (median)")
    ap.add_argument("--train-repeats", type=int, default=3, help="timed train steps (median)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--skip-sampling", action="store_true", help="time the train step only")
    ap.add_argument("--edm-repo", default=None,
                    help="NVlabs/edm checkout or git dir; omit to run the JAX side only")
    ap.add_argument("--json", default=None, help="write the figures to this file")
    args = ap.parse_args(argv)

    results: dict[str, Any] = dict(
        batch=args.batch, heun_steps=args.steps, nfe=nfe("heun", args.steps),
        device=str(jax.devices()[0].device_kind), backend=jax.default_backend(),
        cpu_count=os.cpu_count(), machine=describe(), conv_wgrad=conv_wgrad_mode(),
        jax=jax.__version__,
    )
    print(headline(results["machine"]), flush=True)
    model = SongUNet(**songunet_config("cifar10"))
    net = None
    if args.edm_repo:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        results["torch"] = torch.__version__
        edm_dir = export_edm(args.edm_repo)
        net = build_torch(edm_dir, dropout=model.dropout)
        params = {"params": params_from_edm_state_dict(net.state_dict())}
        # Parity of one denoiser call D(x; σ) before timing.
        x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
        sigma = np.array([0.05, 3.0], np.float32)
        net.eval()
        with torch.no_grad():
            want = net(torch.from_numpy(x), torch.from_numpy(sigma)).numpy()
        got = jax.jit(lambda p, x, s: denoise(model.apply, p, x, s))(
            params, x.transpose(0, 2, 3, 1), sigma)
        diff = float(np.abs(np.asarray(got).transpose(0, 3, 1, 2) - want).max())
        results["parity_max_abs_diff"] = diff
        print(f"parity: max |D_jax - D_torch| = {diff:.2e} (|D| max {np.abs(want).max():.2f})",
              flush=True)
        if not diff < 1e-2 * max(1.0, float(np.abs(want).max())):
            raise SystemExit(f"bench_edm: JAX and PyTorch networks disagree ({diff})")
    else:
        shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                jnp.zeros(1))
        rng = np.random.default_rng(0)
        params = jax.tree_util.tree_map(
            lambda s: (rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1]) or 1)
                       ).astype(np.float32), shapes)
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
    results["params"] = n_params
    print(f"DDPM++ cifar10: {n_params:,} parameters, batch {args.batch}, Heun {args.steps} "
          f"steps (NFE {nfe('heun', args.steps)}), {jax.default_backend()}", flush=True)

    bench_jax(args, params, results)
    if net is not None:
        bench_torch(args, net, results)
        for what in ("train",) if args.skip_sampling else ("sample", "train"):
            r = results[f"jax_{what}_img_per_s"] / results[f"torch_{what}_img_per_s"]
            results[f"ratio_{what}_jax_over_torch"] = r
            rc = CPU_SECONDS[f"torch_{what}"] / CPU_SECONDS[f"jax_{what}"]
            results[f"ratio_{what}_jax_over_torch_cpu_time"] = rc
            print(f"ratio {what} (augdiff JAX / NVlabs PyTorch): {r:.2f}x wall, "
                  f"{rc:.2f}x by CPU time")
    for label, cpu in CPU_SECONDS.items():
        results[f"{label}_cpu_s_per_img"] = cpu / args.batch
    print(json.dumps(results, indent=1))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
