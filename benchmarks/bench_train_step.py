"""Train-step throughput (images/s) of the classifier step, against a named peer in the same run.

    python benchmarks/bench_train_step.py [--models preact_resnet18,preact_resnet_tiny]
        [--batch 128] [--size 32] [--steps 5] [--peers torch,native] [--json OUT]

For each model it times ``augdiff.train.classifier.make_train_step`` (SGD momentum, crop+flip
on device, CE loss; jitted once, state donated, batch sharded over every device) and each
*peer* in ``--peers``:

- ``torch``: a PyTorch PreActResNet18 (the same architecture, written here: BN-ReLU-conv
  units, CIFAR stem, 1x1 projection shortcuts) with the same batch, zero-pad-4 crop + flip
  on the batch tensor, SGD momentum 0.9 + weight decay 5e-4, CE loss (``preact_resnet*``
  models only);
- ``native``: the identical augdiff step traced with ``AUGDIFF_CONV_WGRAD=native``, i.e. XLA's
  own convolution weight gradient instead of :mod:`augdiff.models.conv`'s GEMM;
- ``nodonate``: the identical step compiled without buffer donation;
- ``bf16``: bf16 compute (params stay fp32).

All are measured in the same process,
interleaved round by round, so machine load affects them alike; the ratio is
``images/s (augdiff step) / images/s (peer)``. The CPU model and its vector extensions
are printed with the figures. Wall images/s and CPU-seconds per image
(process time, robust to other load on a shared machine) are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
from machine import describe, headline

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


def torch_preact_resnet18(width: int = 64, num_classes: int = 10):
    """PyTorch PreActResNet18 (He et al., 2016b; the CIFAR variant augdiff implements)."""
    import torch.nn as tnn
    import torch.nn.functional as F

    class Block(tnn.Module):
        def __init__(self, cin: int, planes: int, stride: int):
            super().__init__()
            self.bn1 = tnn.BatchNorm2d(cin)
            self.conv1 = tnn.Conv2d(cin, planes, 3, stride, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(planes)
            self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.short = (tnn.Conv2d(cin, planes, 1, stride, bias=False)
                          if stride != 1 or cin != planes else None)

        def forward(self, x):
            a = F.relu(self.bn1(x))
            sc = self.short(a) if self.short is not None else x
            y = self.conv1(a)
            y = self.conv2(F.relu(self.bn2(y)))
            return y + sc

    class Net(tnn.Module):
        def __init__(self):
            super().__init__()
            self.stem = tnn.Conv2d(3, width, 3, 1, 1, bias=False)
            layers, cin = [], width
            for i in range(4):
                planes = width * 2**i
                for j in range(2):
                    layers.append(Block(cin, planes, 2 if (i > 0 and j == 0) else 1))
                    cin = planes
            self.layers = tnn.Sequential(*layers)
            self.fc = tnn.Linear(cin, num_classes)

        def forward(self, x):
            y = self.layers(self.stem(x))
            return self.fc(y.mean((2, 3)))

    return Net()


def build_torch(name: str, batch: int, size: int):
    """A PyTorch train step (crop/flip, SGD momentum + weight decay, CE) and its batch."""
    import torch
    import torch.nn.functional as F

    if not name.startswith("preact_resnet"):
        return None
    width = 64 if name == "preact_resnet18" else 16
    net = torch_preact_resnet18(width).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (batch, 3, size, size), dtype=np.uint8))
    labels = torch.from_numpy(rng.integers(0, 10, batch).astype(np.int64))
    gen = torch.Generator().manual_seed(0)

    def step():
        x = images.float() / 127.5 - 1.0
        xp = F.pad(x, (4, 4, 4, 4))
        off = torch.randint(0, 9, (batch, 2), generator=gen)
        flip = torch.rand(batch, generator=gen) < 0.5
        crops = torch.stack([xp[i, :, off[i, 0]:off[i, 0] + size, off[i, 1]:off[i, 1] + size]
                             for i in range(batch)])
        crops = torch.where(flip[:, None, None, None], crops.flip(3), crops)
        loss = F.cross_entropy(net(crops), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    n_params = sum(p.numel() for p in net.parameters())
    return step, n_params


def bench(name: str, batch: int, size: int, steps: int, peers: list[str], mesh) -> dict:
    variants = {"augdiff": dict(dtype=jnp.float32, donate=True, wgrad="auto")}
    for peer in peers:
        if peer == "native":
            variants[peer] = dict(dtype=jnp.float32, donate=True, wgrad="native")
        elif peer == "nodonate":
            variants[peer] = dict(dtype=jnp.float32, donate=False, wgrad="auto")
        elif peer == "bf16":
            variants[peer] = dict(dtype=jnp.bfloat16, donate=True, wgrad="auto")
    runs = {}
    for key, kw in variants.items():
        wgrad = kw.pop("wgrad")
        old = os.environ.get("AUGDIFF_CONV_WGRAD")
        os.environ["AUGDIFF_CONV_WGRAD"] = wgrad  # read when the step is traced (first call)
        try:
            state, step, b, n_params = build(name, batch, size, mesh=mesh, **kw)
            t0 = time.perf_counter()
            state, m = step(state, b)  # compile + first step
            jax.block_until_ready(m)
        finally:
            if old is None:
                os.environ.pop("AUGDIFF_CONV_WGRAD", None)
            else:
                os.environ["AUGDIFF_CONV_WGRAD"] = old
        runs[key] = dict(state=state, step=step, batch=b, compile_s=time.perf_counter() - t0,
                         wall=0.0, cpu=0.0, n_params=n_params, kind="jax")
    if "torch" in peers:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        built = build_torch(name, batch, size)
        if built is not None:
            tstep, n_t = built
            t0 = time.perf_counter()
            tstep()
            runs["torch"] = dict(step=tstep, compile_s=time.perf_counter() - t0, wall=0.0,
                                 cpu=0.0, n_params=n_t, kind="torch")
    for _ in range(steps):  # interleave so load changes hit all alike
        for r in runs.values():
            w0, c0 = time.perf_counter(), _cpu_seconds()
            if r["kind"] == "jax":
                r["state"], m = r["step"](r["state"], r["batch"])
                jax.block_until_ready(m)
            else:
                r["step"]()
            r["wall"] += time.perf_counter() - w0
            r["cpu"] += _cpu_seconds() - c0
    out = {"model": name, "batch": batch, "image_size": size, "timed_steps": steps,
           "params": runs["augdiff"]["n_params"], "peers": [k for k in runs if k != "augdiff"]}
    for key, r in runs.items():
        out[key] = {
            "images_per_s": steps * batch / r["wall"],
            "cpu_ms_per_image": 1e3 * r["cpu"] / (steps * batch),
            "compile_s": r["compile_s"],
            "params": r["n_params"],
        }
    for key in out["peers"]:
        out[f"ratio_vs_{key}"] = out["augdiff"]["images_per_s"] / out[key]["images_per_s"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="preact_resnet18,preact_resnet_tiny")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--peers", default="torch,native",
                   help="comma-separated: torch, native, nodonate, bf16")
    p.add_argument("--json", default="")
    args = p.parse_args()
    distributed.enable_compilation_cache()
    mesh = distributed.make_mesh()
    peers = [x.strip() for x in args.peers.split(",") if x.strip()]
    machine = describe()
    machine["jax_devices"] = jax.device_count()
    print(headline(machine), flush=True)
    results = []
    for name in args.models.split(","):
        r = bench(name.strip(), args.batch, args.size, args.steps, peers, mesh)
        results.append(r)
        line = (f"{r['model']:>20s} batch {r['batch']} {r['image_size']}²: "
                f"{r['augdiff']['images_per_s']:8.1f} img/s "
                f"({r['augdiff']['cpu_ms_per_image']:.2f} CPU-ms/img, compile "
                f"{r['augdiff']['compile_s']:.1f} s)")
        for k in r["peers"]:
            line += (f"; {k} {r[k]['images_per_s']:.1f} img/s "
                     f"({r[k]['cpu_ms_per_image']:.2f} CPU-ms/img) ratio {r['ratio_vs_' + k]:.2f}")
        print(line, flush=True)
    machine["load_avg_1m_end"] = os.getloadavg()[0]
    print(json.dumps({"machine": machine}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
