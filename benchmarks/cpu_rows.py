"""Real-size CPU rows, augdiff beside its PyTorch peer in the same process, ratios printed.

    python benchmarks/cpu_rows.py --json OUT.json [--rows unet16,text,...] [--repeats 3]

Rows (``--rows``, in this order by default):

- ``unet16`` / ``unet64``: one SD-1.5 UNet step with CFG (batch 2 = one image's two
  branches), fp32, 16² latents (128² images) / 64² latents (512²): augdiff's step
  (:func:`steps.sd_cfg_step`) with attention through ``jax.nn.dot_product_attention``
  (XLA's implementation) and with diffusers' einsum attention (the CPU default), vs
  diffusers' PyTorch ``UNet2DConditionModel`` (SDPA attention) on the same random weights;
- ``text``: CLIP ViT-L/14 text encoding of 2 prompts (77 tokens) vs transformers' PyTorch;
- ``vae128`` / ``vae512``: SD VAE decode of one latent to 128² / 512² vs diffusers' PyTorch;
- ``inversion``: one Diffusion Inversion stage-1 step (fwd + bwd through the frozen UNet into
  the conditioning vectors, AdamW) for 2 images at 128² vs the same step in PyTorch;
- ``loader``: augdiff's loader (real CIFAR-10 zip, batch 128) vs a PyTorch ``DataLoader``
  over the same zip (zipfile + PIL decode), 0 and 2 workers, in steady state (after 20
  warm-up batches; the time to the first batch apart);
- ``preact18``: PreActResNet18 train step (batch 128, 32², crop/flip on device, SGD) vs the
  same step in PyTorch;
- ``edm_train`` / ``edm_heun``: EDM DDPM++ CIFAR-10 (55.7 M parameters, same weights) train
  step and Heun-35 sampling vs NVlabs/edm (``--edm-repo``: a checkout of its public
  repository, kept outside this project; without it these rows are skipped).

Every augdiff row also records the FLOPs of its compiled step (``cost_analysis()``) and its
peak memory (``memory_analysis()``), as ``benchmarks/floors.py`` does.

Both frameworks get 2 threads (``torch.set_num_threads``; XLA's CPU client uses the process's
cores). Each row: median wall seconds and CPU-seconds of this process per call, after a
warm-up call (JAX compile reported separately), the two sides interleaved. JSON is rewritten
after every row, so a cut run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
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

ROWS = ("unet16", "text", "vae128", "inversion", "loader", "preact18", "edm_train", "edm_heun",
        "unet64", "vae512")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int,
                last: dict[str, Any] | None = None) -> dict[str, dict[str, float]]:
    """Median wall and CPU seconds per call of every ``fns`` entry, round-robin; the outputs
    of the last round go to ``last``."""
    rec: dict[str, dict[str, list]] = {k: {"wall": [], "cpu": []} for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            c0, t0 = _cpu(), time.perf_counter()
            out = fn()
            rec[k]["wall"].append(time.perf_counter() - t0)
            rec[k]["cpu"].append(_cpu() - c0)
            if last is not None:
                last[k] = out
    return {k: {"wall_s": float(np.median(v["wall"])), "cpu_s": float(np.median(v["cpu"]))}
            for k, v in rec.items()}


def xla_cost(compiled: Any, step: S.Step) -> dict[str, float]:
    """GFLOP per call (:func:`steps.model_flops`: counted on the accelerator's code path, so
    the CPU's scanned weight-gradient chunks are not counted once) and peak GiB of the step
    as compiled here (:func:`steps.compiled_cost`)."""
    c = S.compiled_cost(compiled)
    return {"gflop": S.model_flops(step) / 1e9, "peak_gib": c["peak_bytes"] / 2**30}


def _jax_call(step: S.Step) -> tuple[Callable[[], Any], float, dict[str, float]]:
    t0 = time.perf_counter()
    compiled = step.fn.lower(*step.args).compile()
    compile_s = time.perf_counter() - t0
    args = step.args
    return (lambda: jax.block_until_ready(compiled(*args))), compile_s, xla_cost(compiled, step)


class Models:
    """SD-1.5 parts built once, PyTorch twin + the same weights in JAX (fp32)."""

    def __init__(self, tiny: bool):
        self.tiny = tiny
        self.cache: dict[str, Any] = {}

    def get(self, name: str) -> tuple[zoo.Built, Any, Any]:
        if name not in self.cache:
            import torch

            t0 = time.perf_counter()
            built = zoo.build(name, tiny=self.tiny)
            torch.manual_seed(0)
            peer = zoo.torch_peer(name, tiny=self.tiny).requires_grad_(False)
            flat = jax.tree_util.tree_flatten(zoo.flax_params_from_torch(built, peer))
            leaves = list(flat[0])
            for i in range(len(leaves)):  # one leaf at a time: host copies freed as we go
                leaves[i] = jnp.asarray(leaves[i])
            params = jax.tree_util.tree_unflatten(flat[1], leaves)
            print(f"built {name}: {built.param_count:,} parameters "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
            self.cache[name] = (built, peer, params)
        return self.cache[name]

    def comps(self):
        u, v, t = (self.get(n)[0] for n in ("sd15-unet", "sd15-vae", "sd15-text"))
        return zoo.sd_components(u, v, t)


def row_unet(m: Models, latent: int, repeats: int) -> dict[str, Any]:
    import torch

    from augdiff.sd import attention

    unet_b, unet_t, unet_p = m.get("sd15-unet")
    comps = zoo.sd_components(unet_b, zoo.build("sd15-vae", tiny=True),
                              zoo.build("sd15-text", tiny=True))
    params = {"unet": unet_p}
    fns, compile_s, xla = {}, {}, {}
    for impl in ("xla", "diffusers"):
        with attention.use(impl):
            step = S.sd_cfg_step(comps, params, 1, latent)
            k = f"augdiff[{impl}]"
            fns[k], compile_s[impl], xla[k] = _jax_call(step)
    x, t, cond, uncond, w = (np.asarray(a) for a in step.args[1:6])
    xt = torch.from_numpy(x)
    ctx = torch.from_numpy(np.concatenate([uncond, cond]))
    tt = torch.tensor(int(t))
    wt = torch.from_numpy(w).view(-1, 1, 1, 1)

    def torch_step():
        with torch.no_grad():
            out = unet_t(torch.cat([xt, xt]), tt, encoder_hidden_states=ctx).sample
            eu, ec = out.chunk(2)
            return eu + wt * (ec - eu)

    # parity of the step before timing
    last: dict[str, Any] = {}
    res = interleaved({**fns, "torch": torch_step}, repeats, last)  # AOT-compiled: no warm-up
    want = last["torch"].numpy()
    parity = {k: float(np.abs(np.asarray(last[k]) - want).max()) for k in fns}
    return dict(res, compile_s=compile_s, parity_max_abs=parity, xla=xla,
                out_max_abs=float(np.abs(want).max()))


def _jax_stateful_call(step: S.Step, carried: tuple[int, ...]
                       ) -> tuple[Callable[[], Any], float, dict[str, float]]:
    """Like :func:`_jax_call` for a training step: its outputs ``[:len(carried)]`` become the
    arguments at positions ``carried`` of the next call (parameters, optimiser state)."""
    t0 = time.perf_counter()
    compiled = step.fn.lower(*step.args).compile()
    compile_s = time.perf_counter() - t0
    xla = xla_cost(compiled, step)
    state = list(step.args)

    def fn():
        out = compiled(*state)
        for i, pos in enumerate(carried):
            state[pos] = out[i]
        jax.block_until_ready(out)

    return fn, compile_s, xla


def row_text(m: Models, repeats: int) -> dict[str, Any]:
    import torch

    from augdiff.sd import pipelines

    b, peer, p = m.get("sd15-text")
    comps = zoo.sd_components(zoo.build("sd15-unet", tiny=True), zoo.build("sd15-vae", tiny=True),
                              b)
    step = S.text_encode(comps, {"text_encoder": p}, 2, vocab=int(b.config["vocab_size"]))
    fn, cs, xla = _jax_call(step)
    ids = torch.from_numpy(np.asarray(step.args[1]).astype(np.int64))

    def torch_fn():
        with torch.no_grad():
            return peer(input_ids=ids).last_hidden_state

    want = torch_fn().numpy()
    got = np.asarray(pipelines._text_encode(comps, {"text_encoder": p}, step.args[1]))
    fn()
    return dict(interleaved({"augdiff": fn, "torch": torch_fn}, repeats), compile_s=cs,
                parity_max_abs=float(np.abs(got - want).max()), xla={"augdiff": xla})


def row_vae(m: Models, size: int, repeats: int) -> dict[str, Any]:
    import torch

    b, peer, p = m.get("sd15-vae")
    comps = zoo.sd_components(zoo.build("sd15-unet", tiny=True), b,
                              zoo.build("sd15-text", tiny=True))
    step = S.vae_decode(comps, {"vae": p}, 1, size // comps.vae_scale_factor)
    fn, cs, xla = _jax_call(step)
    z = torch.from_numpy(np.asarray(step.args[1]))

    def torch_fn():
        with torch.no_grad():
            return peer.decode(z / 0.18215).sample

    return dict(interleaved({"augdiff": fn, "torch": torch_fn}, repeats), compile_s=cs,
                xla={"augdiff": xla})


def row_inversion(m: Models, repeats: int, batch: int = 2, size: int = 128) -> dict[str, Any]:
    import torch

    unet_b, unet_t, unet_p = m.get("sd15-unet")
    comps = zoo.sd_components(unet_b, zoo.build("sd15-vae"), zoo.build("sd15-text", tiny=True))
    lat = size // comps.vae_scale_factor
    step = S.inversion_step(comps, {"unet": unet_p}, batch, lat)
    jax_fn, cs, xla = _jax_stateful_call(step, carried=(1, 2))

    d = int(comps.unet.cross_attention_dim)
    cvec = torch.nn.Parameter(torch.empty(batch, 5, d).uniform_(-0.1, 0.1))
    opt = torch.optim.AdamW([cvec], lr=0.03, weight_decay=1e-2)
    z0 = torch.from_numpy(np.asarray(step.args[3]))
    abar = torch.from_numpy(np.cumprod(1 - np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2)
                            .astype(np.float32))

    def torch_fn():
        t = torch.randint(0, 1000, (batch,))
        eps = torch.randn_like(z0)
        a = abar[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * z0 + (1 - a).sqrt() * eps
        pred = unet_t(x_t, t, encoder_hidden_states=cvec).sample
        loss = ((pred - eps) ** 2).mean(dim=(1, 2, 3)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    jax_fn()
    torch_fn()
    return dict(interleaved({"augdiff": jax_fn, "torch": torch_fn}, repeats), compile_s=cs,
                batch=batch, xla={"augdiff": xla})


def row_edm(edm_repo: str, what: str, repeats: int, batch: int) -> dict[str, Any]:
    """EDM DDPM++ CIFAR-10 (55.7 M parameters), the same random weights in both: augdiff's
    one-jit Heun-35 sampler (EDM Algorithm 1, :func:`steps.edm_heun`) vs the ``edm_sampler``
    loop of NVlabs/edm ``generate.py`` (``what="heun"``), or one EDM-loss + Adam step
    (:func:`steps.edm_train`, dropout on) vs NVlabs/edm ``EDMLoss`` + ``torch.optim.Adam``
    (``what="train"``)."""
    import bench_edm
    import torch

    from augdiff.models.songunet import SongUNet, params_from_edm_state_dict, songunet_config

    model = SongUNet(**songunet_config("cifar10"))
    net = bench_edm.build_torch(bench_edm.export_edm(edm_repo), dropout=model.dropout)
    params = jax.tree_util.tree_map(jnp.asarray, params_from_edm_state_dict(net.state_dict()))
    if what == "heun":
        from generate import edm_sampler

        step = S.edm_heun(model, params, batch, 32)
        fn, cs, xla = _jax_call(step)
        net.eval()
        latents = torch.randn([batch, 3, 32, 32], generator=torch.Generator().manual_seed(1))

        def torch_fn():
            with torch.no_grad():
                return edm_sampler(net, latents, num_steps=18)

        res = interleaved({"augdiff": fn, "torch": torch_fn}, repeats)
    else:
        from training.loss import EDMLoss

        step = S.edm_train(model, params, batch, 32)
        fn, cs, xla = _jax_stateful_call(step, carried=(0, 1))

        net.train()
        loss_fn, opt = EDMLoss(), torch.optim.Adam(net.parameters(), lr=1e-4)
        images = torch.rand([batch, 3, 32, 32]) * 2 - 1

        def torch_fn():
            opt.zero_grad(set_to_none=True)
            loss_fn(net=net, images=images).mean().backward()
            opt.step()

        fn()
        torch_fn()
        res = interleaved({"augdiff": fn, "torch": torch_fn}, repeats)
    return dict(res, compile_s=cs, batch=batch, xla={"augdiff": xla})


def row_preact18(repeats: int, batch: int = 128) -> dict[str, Any]:
    """PreActResNet18 train step (batch 128 at 32², crop/flip on device, SGD momentum + weight
    decay, CE; augdiff's ``make_train_step``, :func:`steps.classifier_train`) vs the same step
    in PyTorch (``bench_train_step.build_torch``: the network written in the benchmark)."""
    import bench_train_step

    step = S.classifier_train(zoo.build("preact_resnet18"), batch, abstract=False)
    fn, cs, xla = _jax_stateful_call(step, carried=(0,))

    torch_fn, _ = bench_train_step.build_torch("preact_resnet18", batch, 32)
    fn()
    torch_fn()
    return dict(interleaved({"augdiff": fn, "torch": torch_fn}, repeats), compile_s=cs,
                batch=batch, xla={"augdiff": xla})


class ZipJPEGs:
    """The PyTorch peer's dataset: the zip's train JPEGs, decoded with PIL per item."""

    def __init__(self, path: str):
        import zipfile

        self.path = path
        with zipfile.ZipFile(path) as z:
            self.names = sorted(n for n in z.namelist()
                                if "/train/" in n and n.endswith(".jpg"))
        self.classes = sorted({n.split("/")[-2] for n in self.names})
        self.zip = None

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int):
        import io
        import zipfile

        import torch
        from PIL import Image

        if self.zip is None:  # one handle per worker process
            self.zip = zipfile.ZipFile(self.path)
        name = self.names[i]
        img = Image.open(io.BytesIO(self.zip.read(name))).convert("RGB")
        return (torch.from_numpy(np.asarray(img, np.uint8)),
                self.classes.index(name.split("/")[-2]))


def row_loader(batches: int = 150, warmup: int = 20, batch: int = 128) -> dict[str, Any]:
    """Images/s of augdiff's loader and of a PyTorch ``DataLoader`` over the same zip, 0 and 2
    workers, in steady state: ``warmup`` batches are drawn first (worker start-up: grain
    spawns its workers, PyTorch forks them), then ``batches`` are timed; the time to the first
    batch is reported apart."""
    import ml_collections
    import torch
    from absl import flags

    flags.FLAGS.mark_as_parsed()
    from augdiff.data.loader import MixedLoader
    from augdiff.data.sources import open_real_source

    path = os.path.join(REPO, "..", "shared", "data", "cifar10-jpeg.zip")
    path = os.environ.get("AUGDIFF_CIFAR_ZIP", path)
    real = open_real_source(ml_collections.ConfigDict(dict(path=path, image_size=32,
                                                           channels=3)), "train")

    def measure(it: Any, tag: str, out: dict[str, Any], size: Callable[[Any], int]) -> None:
        t0 = time.perf_counter()
        next(it)
        out[f"{tag}_first_batch_s"] = time.perf_counter() - t0
        for _ in range(warmup - 1):
            next(it)
        c0, t0 = _cpu(), time.perf_counter()
        n = sum(size(next(it)) for _ in range(batches))
        out[f"{tag}_img_per_s"] = n / (time.perf_counter() - t0)
        out[f"{tag}_main_cpu_ms_per_img"] = 1e3 * (_cpu() - c0) / n

    out: dict[str, Any] = {"timed_batches": batches, "warmup_batches": warmup}
    for workers in (0, 2):
        ld = MixedLoader(real, None, batch_size=batch, schedule=0.0, epochs=1,
                         steps_per_epoch=batches + warmup, seed=0, num_workers=workers,
                         process_index=0, process_count=1)
        with ld:
            measure(iter(ld), f"augdiff_{workers}w", out, lambda b: b["image"].shape[0])
        dl = torch.utils.data.DataLoader(ZipJPEGs(path), batch_size=batch, shuffle=True,
                                         num_workers=workers, drop_last=True,
                                         generator=torch.Generator().manual_seed(0))
        it = iter(dl)
        measure(it, f"torch_{workers}w", out, lambda b: b[0].shape[0])
        del it, dl
        out[f"ratio_{workers}w"] = out[f"augdiff_{workers}w_img_per_s"] / out[
            f"torch_{workers}w_img_per_s"]
    return out


LABELS = {
    "unet16": "SD-1.5 UNet CFG step (batch 2), 16² latents (128²)",
    "unet64": "SD-1.5 UNet CFG step (batch 2), 64² latents (512²)",
    "text": "CLIP ViT-L/14 text encoding, 2 prompts",
    "vae128": "VAE decode, 1 image 128²",
    "vae512": "VAE decode, 1 image 512²",
    "inversion": "Diffusion Inversion stage-1 step, 2 images 128²",
    "edm_heun": "EDM DDPM++ CIFAR-10, Heun-35 sampling (EDM Alg. 1), batch {batch}",
    "edm_train": "EDM DDPM++ CIFAR-10, train step (EDM loss + Adam, dropout), batch {batch}",
    "preact18": "PreActResNet18 train step (SGD, crop/flip), batch {batch} at 32²",
}
PEERS = {"edm_heun": "NVlabs/edm", "edm_train": "NVlabs/edm", "preact18": "PyTorch (written in "
         "the benchmark)", "loader": "PyTorch DataLoader"}


def markdown(result: dict[str, Any]) -> str:
    """The BENCHMARKS.md table of a result (ratio = PyTorch time / augdiff time; GFLOP and
    peak memory of augdiff's compiled step from XLA)."""
    lines = ["| row | augdiff wall s (CPU-s) | peer | peer wall s (CPU-s) | augdiff / peer, wall "
             "| by CPU time | GFLOP / call (XLA) | peak GiB (XLA) | load avg | notes |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in result["rows"].items():
        load = "–".join(f"{x:.1f}" for x in r["load_avg_start_end"])
        if name == "loader":
            for w in (0, 2):
                lines.append(
                    f"| loader, {w} workers (img/s, steady state) | "
                    f"{r[f'augdiff_{w}w_img_per_s']:,.0f} | PyTorch DataLoader | "
                    f"{r[f'torch_{w}w_img_per_s']:,.0f} | **{r[f'ratio_{w}w']:.2f}×** | "
                    f"main-process CPU-ms/img {r[f'augdiff_{w}w_main_cpu_ms_per_img']:.3f} vs "
                    f"{r[f'torch_{w}w_main_cpu_ms_per_img']:.3f} | — | — | {load} | real "
                    f"CIFAR-10 zip, batch 128; first batch {r[f'augdiff_{w}w_first_batch_s']:.1f}"
                    f" s vs {r[f'torch_{w}w_first_batch_s']:.1f} s |")
            continue
        t = r["torch"]
        peer = PEERS.get(name, "diffusers / transformers PyTorch")
        for k in [k for k in r if k.startswith("augdiff") and isinstance(r[k], dict)]:
            a = r[k]
            note = k.replace("augdiff", "").strip("[]")
            note = {"xla": "attention: jax.nn.dot_product_attention (XLA)",
                    "diffusers": "attention: diffusers' einsums"}.get(note, note)
            if isinstance(r.get("parity_max_abs"), dict):
                note += f"; max abs diff vs PyTorch {r['parity_max_abs'][k]:.1e}"
            cost = (r.get("xla") or {}).get(k)
            flops = f"{cost['gflop']:,.1f}" if cost else "—"
            peak = f"{cost['peak_gib']:.2f}" if cost else "—"
            label = LABELS.get(name, name).format(batch=r.get("batch", ""))
            lines.append(
                f"| {label} | {a['wall_s']:.3g} ({a['cpu_s']:.3g}) | {peer} | "
                f"{t['wall_s']:.3g} ({t['cpu_s']:.3g}) | **{t['wall_s'] / a['wall_s']:.2f}×** | "
                f"{t['cpu_s'] / a['cpu_s']:.2f}× | {flops} | {peak} | {load} | {note} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--repeats-large", type=int, default=1, help="for unet64 / vae512")
    ap.add_argument("--tiny", action="store_true", help="tiny models (checks the script)")
    ap.add_argument("--json", default="")
    ap.add_argument("--md", default="", help="also write the markdown table here")
    ap.add_argument("--table-from", default="", help="only print the table of this JSON")
    ap.add_argument("--edm-repo", default="",
                    help="an NVlabs/edm checkout or its git directory (the edm_* rows' peer)")
    ap.add_argument("--edm-batch", type=int, default=4)
    args = ap.parse_args(argv)
    if args.table_from:
        with open(args.table_from) as f:
            print(markdown(json.load(f)))
        return 0
    import torch

    from augdiff import distributed

    distributed.enable_compilation_cache()
    torch.set_num_threads(2)
    machine = describe()
    machine["torch_threads"] = torch.get_num_threads()
    print(headline(machine), flush=True)
    result: dict[str, Any] = {"machine": machine, "rows": {}}
    m = Models(args.tiny)
    for name in [r.strip() for r in args.rows.split(",") if r.strip()]:
        t0 = time.perf_counter()
        load0 = os.getloadavg()[0]
        if name in ("unet16", "unet64"):
            r = row_unet(m, 16 if name == "unet16" else 64,
                         args.repeats if name == "unet16" else args.repeats_large)
        elif name == "text":
            r = row_text(m, args.repeats)
        elif name in ("vae128", "vae512"):
            r = row_vae(m, 128 if name == "vae128" else 512,
                        args.repeats if name == "vae128" else args.repeats_large)
        elif name == "inversion":
            r = row_inversion(m, args.repeats)
        elif name == "loader":
            r = row_loader()
        elif name == "preact18":
            r = row_preact18(args.repeats)
        elif name in ("edm_heun", "edm_train"):
            if not args.edm_repo:
                print(f"{name}: skipped (its peer needs --edm-repo, an NVlabs/edm checkout)")
                continue
            r = row_edm(args.edm_repo, name[4:], args.repeats_large if name == "edm_heun"
                        else args.repeats, args.edm_batch)
        else:
            raise SystemExit(f"unknown row {name!r}; choose from {ROWS}")
        r["load_avg_start_end"] = [load0, os.getloadavg()[0]]
        r["row_wall_s"] = time.perf_counter() - t0
        for k in [k for k in r if isinstance(r[k], dict) and "wall_s" in r[k]]:
            if k != "torch" and "torch" in r:
                r[f"ratio_wall[{k}/torch]"] = r["torch"]["wall_s"] / r[k]["wall_s"]
                r[f"ratio_cpu[{k}/torch]"] = r["torch"]["cpu_s"] / r[k]["cpu_s"]
        result["rows"][name] = r
        print(name, json.dumps(r), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
        if args.md:
            with open(args.md, "w") as f:
                f.write(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
