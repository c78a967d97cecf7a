"""One 3×3 convolution, forward / input gradient / weight gradient: XLA vs augdiff vs PyTorch.

    python benchmarks/bench_conv.py [--batch 128] [--size 32] [--channels 128] [--stride 1]
        [--groups 1] [--repeats 3] [--json OUT]

Times, in one process and interleaved round by round (so machine load hits all alike):

- ``xla``: ``jax.lax.conv_general_dilated`` and its autodiff (NHWC/HWIO);
- ``augdiff``: :func:`augdiff.models.conv.conv_general_dilated` (XLA forward and input
  gradient, weight gradient as one matmul per kernel offset when on the CPU);
- ``torch``: ``torch.nn.functional.conv2d`` (NCHW) and its backward, same threads.

Rows: forward, input gradient (dgrad), weight gradient (wgrad), and forward + both gradients.
Prints the CPU model, its vector extensions and the load average with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from machine import describe, headline

from augdiff.models import conv as aconv

DN = ("NHWC", "HWIO", "NHWC")


def jax_fns(impl, stride: int, groups: int, pad: int):
    def f(x, w):
        return impl(x, w, (stride, stride), [(pad, pad)] * 2, dimension_numbers=DN,
                    feature_group_count=groups)

    def loss(x, w, g):
        return jnp.vdot(f(x, w), g)

    return {
        "fwd": jax.jit(f),
        "dgrad": jax.jit(jax.grad(loss, 0)),
        "wgrad": jax.jit(jax.grad(loss, 1)),
        "fwd+bwd": jax.jit(jax.value_and_grad(loss, (0, 1))),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, default=128)
    p.add_argument("--kernel", type=int, default=3)
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--groups", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--json", default="")
    args = p.parse_args()
    n, s, c, k, st, gr = (args.batch, args.size, args.channels, args.kernel, args.stride,
                          args.groups)
    pad = k // 2
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, s, s, c), np.float32)
    w = rng.standard_normal((k, k, c // gr, c), np.float32)
    w = (w / np.sqrt(k * k * c / gr)).astype(np.float32)
    so = (s + 2 * pad - k) // st + 1
    g = rng.standard_normal((n, so, so, c), np.float32)
    xj, wj, gj = map(jnp.asarray, (x, w, g))
    impls = {"xla": jax_fns(lax.conv_general_dilated, st, gr, pad),
             "augdiff": jax_fns(aconv.conv_general_dilated, st, gr, pad)}
    args_of = {"fwd": (xj, wj), "dgrad": (xj, wj, gj), "wgrad": (xj, wj, gj),
               "fwd+bwd": (xj, wj, gj)}
    calls = {}
    for name, fns in impls.items():
        for row, fn in fns.items():
            a = args_of[row]
            calls[(name, row)] = (lambda fn=fn, a=a: jax.block_until_ready(fn(*a)))
    if not args.no_torch:
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(args.threads)
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        wt = torch.from_numpy(w.transpose(3, 2, 0, 1).copy())
        gt = torch.from_numpy(g.transpose(0, 3, 1, 2).copy())

        def t_fwd():
            with torch.no_grad():
                F.conv2d(xt, wt, stride=st, padding=pad, groups=gr)

        def t_grad(need_x: bool, need_w: bool):
            xi = xt.clone().requires_grad_(need_x)
            wi = wt.clone().requires_grad_(need_w)
            y = F.conv2d(xi, wi, stride=st, padding=pad, groups=gr)
            y.backward(gt)

        calls[("torch", "fwd")] = t_fwd
        calls[("torch", "dgrad")] = lambda: t_grad(True, False)
        calls[("torch", "wgrad")] = lambda: t_grad(False, True)
        calls[("torch", "fwd+bwd")] = lambda: t_grad(True, True)
        # Parity of the weight gradient (independent reference) before timing.
        wi = wt.clone().requires_grad_(True)
        F.conv2d(xt, wi, stride=st, padding=pad, groups=gr).backward(gt)
        ours = np.asarray(impls["augdiff"]["wgrad"](xj, wj, gj))
        ref = wi.grad.numpy().transpose(2, 3, 1, 0)
        print(f"wgrad parity augdiff vs torch: max rel err "
              f"{np.abs(ours - ref).max() / np.abs(ref).max():.2e}")
    t0 = time.perf_counter()
    for fn in calls.values():
        fn()  # compile / warm
    print(f"compile + warm-up {time.perf_counter() - t0:.1f} s", flush=True)
    walls: dict = {key: [] for key in calls}
    cpus: dict = {key: [] for key in calls}
    for _ in range(args.repeats):
        for key, fn in calls.items():
            c0, w0 = time.process_time(), time.perf_counter()
            fn()
            walls[key].append(time.perf_counter() - w0)
            cpus[key].append(time.process_time() - c0)
    info = describe()
    print(headline(info))
    print(f"conv {k}x{k} {c}->{c} stride {st} groups {gr}, {s}², batch {n}, fp32; "
          f"median of {args.repeats} (wall s)")
    names = [nm for nm in ("xla", "augdiff", "torch") if (nm, "fwd") in calls]
    print(f"{'row':>8s} " + " ".join(f"{nm:>9s}" for nm in names)
          + "  augdiff/xla  torch/augdiff")
    rows = {}
    for row in ("fwd", "dgrad", "wgrad", "fwd+bwd"):
        med = {nm: statistics.median(walls[(nm, row)]) for nm in names}
        rows[row] = {nm: {"wall_s": med[nm], "cpu_s": statistics.median(cpus[(nm, row)])}
                     for nm in names}
        line = f"{row:>8s} " + " ".join(f"{med[nm]:9.3f}" for nm in names)
        line += f"  {med['xla'] / med['augdiff']:10.2f}x"
        if "torch" in med:
            line += f"  {med['torch'] / med['augdiff']:12.2f}x"
        print(line)
    info["load_avg_1m_end"] = os.getloadavg()[0]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
