"""Cost of the online DiffuseMix transforms per batch, relative to a classifier train step.

    python benchmarks/bench_transforms.py [--batch 128] [--size 32] [--shb-size 256]
                                          [--iters 20] [--peer auto|preact|conv] [--json out]

Times (median wall ms per batch, after compilation) of every transform of
``augdiff.methods.hybrids`` / ``augdiff.methods.semantic`` as used online inside the input
pipeline — concatenation and random-rectangle hybrids with per-epoch masks, each with and
without fractal blending (λ ~ U[α, β], label scaling), and the CLIP-free part of SHB (cosine
map, median mask, nearest upsampling, 5×5 Gaussian, blend) at the batch size and at 256² —
and the same for the peer:

- ``preact``: one PreActResNet18 SGD train step of ``augdiff.train.classifier``
  (``make_train_step``: forward, backward, update, BatchNorm) on the same batch;
- ``conv``: when the trainer is not importable, a plain jitted forward/backward of a
  4-layer conv net of similar width (named as such in the output).

Inputs are random (values do not change the cost). The last column gives each transform's
time as a percentage of the peer's step time.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def timeit(fn: Callable[[], Any], iters: int, warmup: int = 1) -> tuple[float, float]:
    """(compile + first call seconds, median ms per call) of a jitted thunk."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        jax.block_until_ready(fn())
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append((time.perf_counter() - t) * 1e3)
    return first, statistics.median(times)


def transform_cases(batch: int, size: int, shb_size: int, shb_batch: int) -> dict[str, Callable]:
    from augdiff.methods import hybrids as H
    from augdiff.methods import semantic as S

    k = jax.random.split(jax.random.key(0), 6)
    orig = jax.random.uniform(k[0], (batch, size, size, 3), minval=-1, maxval=1)
    gen = jax.random.uniform(k[1], (batch, size, size, 3), minval=-1, maxval=1)
    bank = jax.random.uniform(k[2], (64, size, size, 3), minval=-1, maxval=1)
    ids = jnp.arange(batch)
    base = jax.random.key(1)

    def dm(spec: H.DiffuseMixSpec) -> Callable:
        return lambda: H.diffusemix(base, orig, gen, ids, bank, spec=spec, epoch=3)

    online = dict(policy="online", lam=(0.0, 0.4), label_scaling=True)
    plain = dict(policy="online", fractal=False)
    cases: dict[str, Callable] = {
        "concat hybrid (online)": dm(H.DiffuseMixSpec(mask="concat", **plain)),
        "random hybrid (online)": dm(H.DiffuseMixSpec(mask="random", **plain)),
        "concat + fractal, λ~U, Lsf": dm(H.DiffuseMixSpec(mask="concat", **online)),
        "random + fractal, λ~U, Lsf": dm(H.DiffuseMixSpec(mask="random", **online)),
    }
    # SHB without CLIP: ViT-B/32 gives a 7x7 grid of 512-d tokens; ViT-L/14 a 16x16 grid of 768.
    text = jax.random.normal(k[3], (100, 512))
    labels = jnp.arange(batch) % 100
    patches = jax.random.normal(k[4], (batch, 49, 512))
    cases["SHB, CLIP-free (7x7 grid)"] = lambda: S.semantic_hybrid(orig, gen, patches, text, labels)

    cases[f"SHB, CLIP-free @{shb_size}² x{shb_batch} (16x16 grid)"] = _big_shb(
        k[5], shb_batch, shb_size
    )
    return cases


class _big_shb:
    """The 256² SHB case; its ~300 MB of inputs exist only while it is being timed."""

    def __init__(self, key: jax.Array, batch: int, size: int):
        self.key, self.batch, self.size, self.inputs = key, batch, size, None

    def __call__(self) -> Any:
        from augdiff.methods import semantic as S

        if self.inputs is None:
            k1, k2, k3 = jax.random.split(self.key, 3)
            o = jax.random.uniform(k1, (self.batch, self.size, self.size, 3), minval=-1, maxval=1)
            self.inputs = (o, o[::-1], jax.random.normal(k2, (self.batch, 256, 768)),
                           jax.random.normal(k3, (self.batch, 768)))
        return S.semantic_hybrid(*self.inputs)

    def release(self) -> None:
        self.inputs = None


def preact_peer(batch: int, size: int, width: int) -> tuple[str, Callable]:
    """One ``augdiff.train.classifier`` train step of PreActResNet18 (SGD, CE)."""
    import optax

    from augdiff import distributed
    from augdiff.models.classifiers import get_classifier
    from augdiff.train import classifier as C

    model = get_classifier("preact_resnet18", 100, width=width)
    tx = optax.sgd(0.1, momentum=0.9)
    mesh = distributed.make_mesh()
    state = C.create_train_state(jax.random.key(0), model, tx, (size, size, 3))
    state = jax.device_put(state, C.state_sharding(state, mesh))
    step = C.make_train_step(model, tx, mesh, state, num_classes=100, donate=False)
    rng = np.random.default_rng(0)
    b = {
        "image": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
        "label": rng.integers(0, 100, (batch,), dtype=np.int32),
        "weight": np.ones((batch,), np.float32),
        "source": np.zeros((batch,), np.int32),
    }
    b = distributed.shard_batch(b, mesh)
    return f"PreActResNet18 train step (width {width})", lambda: step(state, b)


def conv_peer(batch: int, size: int, width: int) -> tuple[str, Callable]:
    """Forward + backward of a plain 4-layer conv net (fallback peer)."""
    import flax.linen as nn

    class ConvNet(nn.Module):
        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            for i, f in enumerate((width, 2 * width, 4 * width, 8 * width)):
                x = nn.relu(nn.Conv(f, (3, 3), strides=1 if i == 0 else 2)(x))
            return nn.Dense(100)(x.mean(axis=(1, 2)))

    model = ConvNet()
    x = jax.random.normal(jax.random.key(0), (batch, size, size, 3))
    y = jax.nn.one_hot(jnp.arange(batch) % 100, 100)
    params = model.init(jax.random.key(1), x[:1])

    @jax.jit
    def step(p):
        return jax.grad(lambda p: -(jax.nn.log_softmax(model.apply(p, x)) * y).sum(-1).mean())(p)

    return f"plain conv net fwd+bwd (4 layers, width {width})", lambda: step(params)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--shb-size", type=int, default=256)
    ap.add_argument("--shb-batch", type=int, default=128)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--peer-iters", type=int, default=5)
    ap.add_argument("--width", type=int, default=64, help="classifier width (64 = standard)")
    ap.add_argument("--peer", choices=("auto", "preact", "conv", "none"), default="auto")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)

    from tqdm.auto import tqdm

    info = {
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "jax": jax.__version__,
        "machine": platform.processor() or platform.machine(),
        "batch": args.batch,
        "size": args.size,
    }
    print(json.dumps(info))
    results: dict[str, dict[str, float]] = {}
    cases = transform_cases(args.batch, args.size, args.shb_size, args.shb_batch)
    for name, fn in tqdm(cases.items(), desc="transforms", file=sys.stderr):
        first, ms = timeit(fn, args.iters)
        results[name] = {"ms": ms, "compile_s": first}
        if hasattr(fn, "release"):
            fn.release()

    peer_name, peer_ms = None, None
    if args.peer != "none":
        builders = {"preact": [preact_peer], "conv": [conv_peer], "auto": [preact_peer, conv_peer]}
        for build in builders[args.peer]:
            try:
                peer_name, peer_fn = build(args.batch, args.size, args.width)
            except ImportError as e:  # trainer not there yet: fall back to the plain conv net
                print(f"peer {build.__name__} unavailable ({e}); falling back", file=sys.stderr)
                continue
            first, peer_ms = timeit(peer_fn, args.peer_iters)
            results[peer_name] = {"ms": peer_ms, "compile_s": first}
            break

    head = f"transform (batch {args.batch} x {args.size}²)"
    print(f"\n{head:58s} {'ms':>10s} {'% of step':>10s}")
    for name, r in results.items():
        share = "" if peer_ms is None or name == peer_name else f"{100 * r['ms'] / peer_ms:.3g}%"
        print(f"{name:58s} {r['ms']:10.2f} {share:>10s}")
    if peer_name:
        print(f"\npeer: {peer_name}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "peer": peer_name, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
