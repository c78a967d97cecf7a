"""``report.md`` of an experiment run (the ``report`` stage of :mod:`augdiff.pipeline.stages`).

The report states which generator made the synthetic data and how it was obtained (trained in
this run, random weights, or user-supplied weights), the classification results (top-1 / top-5
mean ± standard deviation over the training seeds for real only / synthetic only / mixed), the
fidelity metrics with the feature extractor named beside each number, per-class sample grids
(real | synthetic side by side, PNG), the PCA plot when the experiment has one, the stage log
and the resolved config. Every number is read from the stage outputs recorded in
``stages.json`` (which hold what each stage's ``metrics.json`` says), so the report and the
stage outputs agree by construction; figures are written next to it under ``figures/``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from PIL import Image

from augdiff.config import resolve_path, to_dict
from augdiff.data.sources import open_real_source
from augdiff.data.store import SyntheticStore
from augdiff.edm.assets import generator_info
from augdiff.files import atomic_write, read_json
from augdiff.metrics.evaluate import NO_DISCRIMINATION

ROW_LABELS = {"train_real": "real only", "train_synthetic": "synthetic only",
              "train_mixed": "real + synthetic"}


def fmt_pct(mean: float, std: float) -> str:
    """``"12.34 ± 0.56"``: a share in [0, 1] as percent with two decimals."""
    return f"{100.0 * mean:.2f} ± {100.0 * std:.2f}"


# --------------------------------------------------------------------------------------------
# Generator provenance


def describe_generator(config: ml_collections.ConfigDict, outputs: Mapping[str, Any]) -> str:
    """One plain sentence: which generator, and whether it was trained here, has random
    weights, or uses the user's weights."""
    gen = config.get("generator", None)
    if gen is None or "generate" not in outputs:
        return "No synthetic data in this experiment."
    kind = str(gen.kind)
    g = outputs["generate"]
    if kind == "edm":
        tg = outputs.get("train_generator")
        if tg:
            cond = "class-conditional" if tg.get("class_conditional") else "unconditional"
            classes = tg.get("classes", "all")
            data = "the real training subset" + ("" if classes == "all" else
                                                 f" (classes {classes})")
            if tg.get("synthetic"):
                data += f" together with synthetic data: {tg['synthetic']}"
                if tg["mode"] == "casd":
                    data += (", each batch labelled with its source (CASD); sampled at source "
                             f"label y = {tg.get('source_label', 0)} (real)")
            return (
                f"**Trained here**: an EDM SongUNet (preset `{tg['preset']}`, "
                f"{tg['num_params']:,} parameters, {cond}, mode `{tg['mode']}`), trained from "
                f"random initialisation in this run on {data}, for "
                f"{tg['steps']:,} steps ({tg['images_seen']:,} images; final loss "
                f"{_num(tg.get('final_loss'))}), then sampled with the EMA weights "
                f"({g.get('sampler', '?')}, {g.get('sampler_steps', '?')} steps) into "
                f"{g['num_images']:,} images. No pretrained weights were used.")
        shipped = _shipped_generator_info(str(gen.checkpoint))
        if shipped and g.get("checkpoint_step") is not None and \
                int(shipped.get("step", -1)) != int(g["checkpoint_step"]):
            # the package's generator changed after this run sampled it: its record describes
            # another checkpoint, so only say which
            return (f"**Shipped with augdiff**: the EDM checkpoint `{gen.checkpoint}` at step "
                    f"{g['checkpoint_step']} when this run sampled it (the package now holds "
                    f"step {shipped.get('step')}; its `generator.json` describes that one), "
                    f"sampled with {g.get('sampler', '?')} ({g.get('sampler_steps', '?')} "
                    f"steps) into {g['num_images']:,} images; not trained in this run.")
        if shipped:
            return (
                f"**Shipped with augdiff**: the EDM checkpoint `{gen.checkpoint}` (step "
                f"{g.get('checkpoint_step', '?')}; {shipped.get('num_params', 0):,} parameters, "
                f"class-conditional), trained by augdiff itself with "
                f"`{shipped.get('command', 'augdiff train-diffusion')}` on "
                f"{shipped.get('data', 'the real training data')} for "
                f"{int(shipped.get('images_seen', 0)):,} images "
                f"({shipped.get('duration', '?')}); not trained in this run, and trained on "
                f"the full training split, not only this run's subset. Sampled with "
                f"{g.get('sampler', '?')} ({g.get('sampler_steps', '?')} steps) into "
                f"{g['num_images']:,} images.")
        return (f"**User weights**: the EDM checkpoint in `{gen.checkpoint}` (step "
                f"{g.get('checkpoint_step', '?')}), sampled with "
                f"{g.get('sampler', '?')} into {g['num_images']:,} images; not trained here.")
    if kind == "method":
        # What the method's store says made it; the config's generator.weights only when the
        # store (written before stores named their model here) does not say.
        model = str(g.get("model") or "")
        weights = ("random" if "tiny-random" in model else model) or str(
            gen.get("weights", "") or "")
        if weights == "random":
            how = ("**Random weights**: the diffusion model was built with random parameters "
                   "(no pretrained weights are available here), so the images test the "
                   "pipeline, not the method's quality")
        elif weights:
            how = f"**User weights** from `{weights}`"
        else:
            how = "**User weights** as named in the method config"
        return (f"{how}; method `{g.get('method')}` (config `{gen.config}`) wrote "
                f"{g['num_images']:,} images.")
    return (f"**User data**: an existing synthetic store `{g['store']}` (method "
            f"`{g.get('method')}`, {g['num_images']:,} images); no generator ran here.")


def _shipped_generator_info(checkpoint: str) -> dict[str, Any] | None:
    """``generator.json`` of a shipped / exported generator directory, if it is one."""
    return generator_info(resolve_path(checkpoint)) if checkpoint else None


def generated_accuracy_sentence(outputs: Mapping[str, Any]) -> str:
    """"Classifier accuracy on generated samples" in words (EDM reports), or ``''``."""
    acc = (outputs.get("evaluate") or {}).get("accuracy")
    if not acc:
        if "evaluate" in outputs:
            return ("Classifier accuracy on generated samples: not measured (the evaluation "
                    "extractor is not a trained classifier).")
        return ""
    real = acc.get("real")
    real_txt = f"; on held-out real images it scores {100 * float(real):.2f}%" if real else ""
    return (f"**Classifier accuracy on generated samples: {100 * float(acc['synthetic']):.2f}%** "
            f"of {acc['num_synthetic']:,} class-conditional samples are classified as their "
            f"conditioning class by `{acc['classifier']}`, a classifier trained on real data "
            f"only (chance: {100 * float(acc['chance']):.1f}%{real_txt}).")


def _num(x: Any, digits: int = 4) -> str:
    try:
        return f"{float(x):.{digits}f}"
    except (TypeError, ValueError):
        return "n/a"


# --------------------------------------------------------------------------------------------
# Tables


def results_table(outputs: Mapping[str, Any]) -> list[str]:
    """Markdown rows: training data | top-1 (%) | top-5 (%) | seeds | per-seed top-1."""
    rows = ["| training data | top-1 (%) | top-5 (%) | seeds | top-1 per seed (%) |",
            "|---|---|---|---|---|"]
    for stage, label in ROW_LABELS.items():
        o = outputs.get(stage)
        if not o:
            continue
        per = ", ".join(f"{100.0 * float(u['test_top1']):.2f}" for u in o["seeds"].values())
        rows.append(f"| {label} | {fmt_pct(o['test_top1_mean'], o['test_top1_std'])} | "
                    f"{fmt_pct(o['test_top5_mean'], o['test_top5_std'])} | {o['num_seeds']} | "
                    f"{per} |")
    return rows


def fidelity_table(ev: Mapping[str, Any]) -> list[str]:
    """Markdown rows, every number tagged with its extractor.

    With control rows (``ev["controls"]``, :mod:`augdiff.metrics.evaluate`): one row per
    image set (the real floor, the generator, the noise / blur / shuffle ceilings) with FID,
    KID, precision, recall, density, coverage and the extractor, preceded by the warning when
    the extractor does not separate the noise ceiling from the floor; then the replication
    rows. Without controls: metric | value | extractor.
    """
    ex = f"`{ev['extractor']}`"
    controls = ev.get("controls") or {}
    rows: list[str] = []
    if controls:
        if ev.get("warning"):
            rows += [f"> **Warning: {ev['warning']}.**", ""]
        k = ev.get("prdc_k", 5)
        rows += [f"| images | FID | KID | precision (k = {k}) | recall | density | coverage | "
                 "feature extractor |", "|---|---|---|---|---|---|---|---|"]

        def row(label: str, m: Mapping[str, Any]) -> str:
            def v(name: str) -> Any:
                x = m[name]
                return x["value"] if isinstance(x, Mapping) else x

            kid_m = m["kid"]["mean"] if "kid" in m else m["kid_mean"]
            kid_s = m["kid"]["std"] if "kid" in m else m["kid_std"]
            return (f"| {label} | {_num(v('fid'))} | {kid_m:.6f} ± {kid_s:.6f} | "
                    f"{_num(v('precision'))} | {_num(v('recall'))} | {_num(v('density'))} | "
                    f"{_num(v('coverage'))} | {ex} |")

        labels = {"floor": "floor: held-out real", "noise": "ceiling: Gaussian noise",
                  "blur": "ceiling: real, blurred", "shuffle": "ceiling: real, patches shuffled"}
        if "floor" in controls:
            rows.append(row(labels["floor"], controls["floor"]))
        rows.append(row("**generator (synthetic store)**", ev))
        for kind in ("noise", "blur", "shuffle"):
            if kind in controls:
                rows.append(row(labels[kind], controls[kind]))
        rows.append("")
        rows += ["| metric | value | feature extractor |", "|---|---|---|"]
    else:
        rows = ["| metric | value | feature extractor |", "|---|---|---|",
                f"| FID | {_num(ev['fid'])} | {ex} |",
                f"| KID | {ev['kid_mean']:.6f} ± {ev['kid_std']:.6f} | {ex} |"]
        for m in ("precision", "recall", "density", "coverage"):
            rows.append(f"| {m} (k = {ev['prdc_k']}) | {_num(ev[m])} | {ex} |")
    acc = ev.get("accuracy")
    if acc:
        real = f"{100.0 * float(acc['real']):.2f}%" if acc.get("real") is not None else "n/a"
        rows.append(f"| classifier accuracy on generated samples (chance "
                    f"{100.0 * float(acc['chance']):.1f}%; on held-out real: {real}) | "
                    f"{100.0 * float(acc['synthetic']):.2f}% | `{acc['classifier']}` |")
    rep = ev.get("replication")
    if rep:
        rex = f"`{rep.get('extractor', ev['extractor'])}`"
        rows += [
            f"| SSIM to nearest training image, mean | {_num(rep['ssim_mean'])} | "
            f"nearest by {rex} |",
            f"| SSIM to nearest training image, max | {_num(rep['ssim_max'])} | "
            f"nearest by {rex} |",
            f"| near copies (SSIM > {rep['near_copy_threshold']}) | "
            f"{100.0 * float(rep['near_copy_share']):.2f}% | nearest by {rex} |",
            f"| nearest-training-neighbour distance, mean | {_num(rep['nn_distance_mean'])} | "
            f"{rex} |",
        ]
    return rows


def parse_results_table(text: str) -> dict[str, dict[str, float]]:
    """Read the results table back from a report (``label -> {top1_mean, top1_std, ...}`` in
    percent); used by tests and tools that compare reports."""
    out: dict[str, dict[str, float]] = {}
    labels = set(ROW_LABELS.values())
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0] in labels:
            m1, s1 = (float(v) for v in cells[1].split("±"))
            m5, s5 = (float(v) for v in cells[2].split("±"))
            out[cells[0]] = {"top1_mean": m1, "top1_std": s1, "top5_mean": m5, "top5_std": s5}
    return out


# --------------------------------------------------------------------------------------------
# Figures


def _tile(images: Sequence[np.ndarray], cols: int, size: int, pad: int = 1) -> np.ndarray:
    """``images`` (uint8 HWC) nearest-upscaled to ``size`` on a ``rows x cols`` white grid."""
    rows = max(1, -(-len(images) // cols))
    out = np.full((rows * (size + pad) + pad, cols * (size + pad) + pad, 3), 255, np.uint8)
    for k, img in enumerate(images):
        img = np.asarray(img)
        if img.shape[-1] == 1:
            img = np.repeat(img, 3, axis=-1)
        up = np.asarray(Image.fromarray(img).resize((size, size), Image.NEAREST))
        r, c = divmod(k, cols)
        y, x = pad + r * (size + pad), pad + c * (size + pad)
        out[y:y + size, x:x + size] = up
    return out


def class_grids(real: Any, synthetic: Any, class_names: Sequence[str], out_dir: str, *,
                per_class: int = 8, cols: int = 4, size: int = 48) -> dict[str, str]:
    """One PNG per class: the class's first ``per_class`` real images (left) beside the first
    ``per_class`` synthetic images of that class (right). Returns class → path."""
    os.makedirs(out_dir, exist_ok=True)
    real_labels = np.asarray(real.labels)
    syn_labels = np.asarray(synthetic.labels)
    paths: dict[str, str] = {}
    for c, name in enumerate(class_names):
        syn_rows = np.flatnonzero(syn_labels == c)[:per_class]
        if len(syn_rows) == 0:
            continue
        real_rows = np.flatnonzero(real_labels == c)[:per_class]
        left = _tile([real[int(i)]["image"] for i in real_rows], cols, size)
        right = _tile([synthetic[int(i)]["image"] for i in syn_rows], cols, size)
        h = max(left.shape[0], right.shape[0])
        gap = np.full((h, 3 * size // 8, 3), 255, np.uint8)
        gap[:, gap.shape[1] // 2 - 1:gap.shape[1] // 2 + 1] = 0  # a black divider
        canvas = np.full((h, left.shape[1] + gap.shape[1] + right.shape[1], 3), 255, np.uint8)
        canvas[:left.shape[0], :left.shape[1]] = left
        canvas[:, left.shape[1]:left.shape[1] + gap.shape[1]] = gap
        canvas[:right.shape[0], left.shape[1] + gap.shape[1]:] = right
        path = os.path.join(out_dir, f"samples_{c:03d}_{_slug(name)}.png")
        Image.fromarray(canvas).save(path)
        paths[name] = path
    return paths


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)[:40]


# --------------------------------------------------------------------------------------------
# The report


def write_report(config: ml_collections.ConfigDict, outputs: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``<workdir>/report.md`` (and ``figures/``) from the stage ``outputs``; returns
    ``{"report": path, "grids": {class: png}, "pca": png or None}``."""
    workdir = os.path.abspath(str(config.workdir))
    fig_dir = os.path.join(workdir, "figures")
    rep_cfg = config.get("report", ml_collections.ConfigDict())
    title = str(rep_cfg.get("title", "") or config.get("name", "") or "augdiff experiment")
    lines: list[str] = [f"# {title}", ""]
    if config.get("description", ""):
        lines += [str(config.description), ""]

    prep = outputs.get("prepare", {})
    lines += ["## Data", ""]
    if prep:
        counts = prep.get("counts_per_class", {})
        lo, hi = (min(counts.values()), max(counts.values())) if counts else (0, 0)
        lines += [f"Real data: `{prep.get('description', '')}` — {prep['num_train']:,} training "
                  f"images in {prep['num_classes']} classes ({lo}–{hi} per class), evaluated "
                  f"on {prep['num_test']:,} test images (the full test split). Row list: "
                  f"`{os.path.relpath(prep['subset_file'], workdir)}`.", ""]
    lines += ["## Generator", "", describe_generator(config, outputs), ""]
    gen_cfg = config.get("generator", None)
    if gen_cfg is not None and str(gen_cfg.get("kind", "")) == "edm":
        sentence = generated_accuracy_sentence(outputs)
        if sentence:
            lines += [sentence, ""]

    if any(s in outputs for s in ROW_LABELS):
        lines += ["## Classification", "",
                  "Test accuracy on the full test split after the last epoch: mean ± sample "
                  "standard deviation (ddof = 1) over the training seeds.", ""]
        lines += results_table(outputs) + [""]
        for stage in ROW_LABELS:
            o = outputs.get(stage)
            if o:
                links = ", ".join(f"[seed {u['seed']}]({os.path.relpath(u['metrics'], workdir)})"
                                  for u in o["seeds"].values())
                lines.append(f"- {ROW_LABELS[stage]}: {links}")
        lines.append("")

    ev = outputs.get("evaluate")
    if ev:
        lines += ["## Fidelity and diversity", "",
                  f"{ev['num_synthetic']:,} synthetic images against {ev['num_real']:,} real "
                  f"`{ev['real_split']}` images; features: `{ev['extractor']}` "
                  f"({ev['feature_dim']}-d). Numbers under different extractors are not "
                  f"comparable. Source: [{os.path.relpath(ev['metrics'], workdir)}]"
                  f"({os.path.relpath(ev['metrics'], workdir)}).", ""]
        if ev.get("controls"):
            verdict = ("the extractor separates the noise ceiling from the real floor, so the "
                       "generator's row can be read between them" if ev.get("discriminates")
                       else NO_DISCRIMINATION)
            lines += ["Control rows, same extractor and image counts: the *floor* is held-out "
                      "real images against the same reference (what a perfect generator "
                      "scores), the *ceilings* are Gaussian noise and real images blurred or "
                      f"shuffled into patches. Here {verdict}.", ""]
        lines += fidelity_table(ev) + [""]

    grids: dict[str, str] = {}
    gen = outputs.get("generate")
    if gen and prep and jax.process_index() == 0:
        real = open_real_source(config.data, str(config.data.get("train_split", "train")),
                                subset=True)
        grids = class_grids(real, SyntheticStore(gen["store"]), prep["class_names"], fig_dir,
                            per_class=int(rep_cfg.get("samples_per_class", 8)))
    if grids:
        lines += ["## Samples", "",
                  "Per class: real training images (left) | synthetic images (right).", "",
                  "| class | real &#124; synthetic |", "|---|---|"]
        for name, path in grids.items():
            rel = os.path.relpath(path, workdir)
            lines.append(f"| {name} | ![{name}]({rel}) |")
        lines.append("")

    pca = outputs.get("pca")
    if pca:
        rel = os.path.relpath(pca["plot"], workdir)
        r = pca["explained_variance_ratio"]
        lines += ["## PCA", "",
                  f"2-D PCA of `{pca['extractor']}` features of {pca['num_real']} real and "
                  f"{pca['num_synthetic']} synthetic images (PC1 {100 * r[0]:.1f}%, PC2 "
                  f"{100 * r[1]:.1f}% of the variance).", "", f"![PCA]({rel})", ""]

    book_path = os.path.join(workdir, "stages.json")
    if os.path.exists(book_path):
        book = read_json(book_path)["stages"]
        lines += ["## Stages", "", "| stage | wall time (s) | attempts | sub-workdir |",
                  "|---|---|---|---|"]
        for name, rec in book.items():
            if name == "report":
                continue
            secs = rec.get("seconds")
            lines.append(f"| {name} | {_num(secs, 1) if secs is not None else 'running'} | "
                         f"{rec.get('attempts', 1)} | `{name}/` |")
        lines.append("")

    lines += ["## Resolved config", "",
              "Each stage's derived config is in `<stage>/stage_config.json` (EDM training: "
              "`train_generator/config.json`).", "", "```json",
              json.dumps(to_dict(config), indent=2, sort_keys=True), "```", ""]
    path = os.path.join(workdir, "report.md")
    if jax.process_index() == 0:
        atomic_write(path, "\n".join(lines))
    return {"report": path, "grids": grids, "pca": pca["plot"] if pca else None}
