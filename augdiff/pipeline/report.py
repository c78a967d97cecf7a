"""``report.md`` of an experiment run (the ``report`` stage of :mod:`augdiff.pipeline.stages`).

The report is titled and described from the run itself: the config's name and variant, the
real data actually read (its file or folder name, classes, image counts, images skipped as
unreadable) and the generator that made the synthetic data and how it was obtained (trained
in this run, random weights, shipped with augdiff, or the user's weights). Then:

- the classification results: top-1 (and top-5 when there are more than 5 classes) as mean ±
  sample standard deviation with the number of seeds, and for every "A vs B" it states
  (real + synthetic vs real only, synthetic only vs real only) the paired difference over
  seeds with a 95 % t interval and a verdict in words ("… better" or "within noise";
  :mod:`augdiff.analysis.compare`);
- training curves (``figures/curves.png``: training loss and test top-1 per epoch, every
  classifier arm and seed on one figure; ``figures/diffusion_loss.png`` when the run trains
  the generator) and the TensorBoard log directories of every trainer;
- per-class test accuracy per arm; the fidelity metrics with the feature extractor named
  beside each number; per-class sample grids (real | synthetic) and the synthetic samples
  by class with class names as row labels; the PCA plot when the experiment has one;
- the stages in run order (the report stage included) and the resolved config.

Every number is read from the stage outputs recorded in ``stages.json`` (which hold what each
stage's ``metrics.json`` says; the curves from those ``metrics.json`` files), so the report
and the stage outputs agree by construction. Every number it prints is also written to
``results.json`` and ``results.csv`` beside it (accuracies as fractions in [0, 1]; the
report prints percent); figures go under ``figures/``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from augdiff.analysis.compare import Comparison, describe, paired_comparison, seed_summary
from augdiff.config import resolve_path, to_dict
from augdiff.data.sources import open_real_source
from augdiff.data.store import SyntheticStore
from augdiff.edm.assets import generator_info
from augdiff.files import atomic_write, read_json, write_json
from augdiff.metrics.evaluate import NO_DISCRIMINATION
from augdiff.pipeline.wiring import STAGES, stage_list

ROW_LABELS = {"train_real": "real only", "train_synthetic": "synthetic only",
              "train_mixed": "real + synthetic"}

COMPARISONS = (("train_mixed", "train_real"), ("train_synthetic", "train_real"))
"""The "A vs B" the report states, as ``(stage A, stage B)``: differences are A − B."""

RESULTS_FORMAT = "augdiff-results/1"


def fmt_pct(mean: float, std: float | None) -> str:
    """``"12.34 ± 0.56"``: a share in [0, 1] as percent with two decimals (``"12.34 ± —"``
    without a standard deviation, i.e. one seed)."""
    sd = "—" if std is None else f"{100.0 * std:.2f}"
    return f"{100.0 * mean:.2f} ± {sd}"


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
# What this run is: title and description from the config and the data used


def data_name(data: Mapping[str, Any]) -> str:
    """The real data's name as the run read it: the TFDS name, else the base name of
    ``data.path`` without ``.zip``."""
    if data.get("tfds_name", ""):
        return str(data["tfds_name"])
    base = os.path.basename(os.path.normpath(str(data.get("path", "") or ""))) or "data"
    return base[:-4] if base.lower().endswith(".zip") else base


def generator_identity(config: ml_collections.ConfigDict, outputs: Mapping[str, Any]) -> str:
    """A short name of what made the synthetic data (the title's last part)."""
    gen = config.get("generator", None)
    g = outputs.get("generate")
    if gen is None or not g:
        return "real data only"
    kind = str(gen.kind)
    if kind == "edm":
        tg = outputs.get("train_generator")
        if tg:
            return f"an EDM generator trained in this run ({tg['steps']:,} steps)"
        ckpt = str(gen.get("checkpoint", "") or "")
        name = os.path.basename(os.path.normpath(ckpt)) or "?"
        step = g.get("checkpoint_step", "?")
        if _shipped_generator_info(ckpt):
            return f"the EDM generator shipped with augdiff (`{name}`, step {step})"
        return f"the EDM checkpoint `{name}` (step {step})"
    if kind == "method":
        model = str(g.get("model") or gen.get("weights", "") or "")
        return f"method `{g.get('method')}`" + (f" with `{model}`" if model else "")
    return f"the existing synthetic store `{os.path.basename(str(g.get('store', '')))}`"


def run_title(config: ml_collections.ConfigDict, outputs: Mapping[str, Any]) -> str:
    """``<name> (<variant>): <data>, K classes, N training images — <generator>``."""
    name = str(config.get("name", "") or "augdiff experiment")
    variant = str(config.get("variant", "") or "")
    prep = outputs.get("prepare", {})
    head = f"{name} ({variant})" if variant else name
    parts = [data_name(config.data)]
    if prep:
        parts += [f"{prep['num_classes']} classes", f"{prep['num_train']:,} training images"]
    return f"{head}: {', '.join(parts)} — {generator_identity(config, outputs)}"


def run_description(config: ml_collections.ConfigDict, outputs: Mapping[str, Any]) -> str:
    """One paragraph of facts about this run (config, data read, generator, arms, seeds)."""
    name = str(config.get("name", "") or "?")
    variant = str(config.get("variant", "") or "")
    cfg = f"`{name}`" + (f" (variant `{variant}`)" if variant else "")
    prep = outputs.get("prepare", {})
    data = config.data
    src = str(data.get("tfds_name", "") or data.get("path", ""))
    out = [f"Config {cfg}; real data `{data_name(data)}` (`{src}`)"]
    if prep:
        counts = prep.get("counts_per_class", {})
        lo, hi = (min(counts.values()), max(counts.values())) if counts else (0, 0)
        out[0] += (f": {prep['num_train']:,} training images in {prep['num_classes']} classes "
                   f"({lo}–{hi} per class) at {data.get('image_size', '?')}², "
                   f"{prep['num_test']:,} test images")
    out.append(f"synthetic data: {generator_identity(config, outputs)}")
    arms = [(ROW_LABELS[s], len(outputs[s]["seeds"])) for s in ROW_LABELS if outputs.get(s)]
    if arms:
        out.append("classifiers on " + ", ".join(f"{a} ({n} seed{'s' * (n != 1)})"
                                                  for a, n in arms))
    return "; ".join(out) + "."


# --------------------------------------------------------------------------------------------
# Classification: arms, seeds, comparisons, per class


def arm_results(outputs: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every classifier arm that ran: ``{stage: {"label", "seeds": {seed key: {seed,
    test_top1, test_top5, [test_class_top1, test_class_count]}}, "test_top1": summary,
    "test_top5": summary}}`` (summaries by :func:`augdiff.analysis.compare.seed_summary`)."""
    arms: dict[str, dict[str, Any]] = {}
    for stage, label in ROW_LABELS.items():
        o = outputs.get(stage)
        if not o or not o.get("seeds"):
            continue
        seeds: dict[str, dict[str, Any]] = {}
        for key, u in o["seeds"].items():
            rec = {"seed": u.get("seed"), "test_top1": float(u["test_top1"]),
                   "test_top5": float(u["test_top5"])}
            for k in ("test_class_top1", "test_class_count"):
                if u.get(k) is not None:
                    rec[k] = list(u[k])
            seeds[key] = rec
        arms[stage] = {"label": label, "seeds": seeds,
                       **{m: seed_summary([r[m] for r in seeds.values()])
                          for m in ("test_top1", "test_top5")}}
    return arms


def arm_comparisons(arms: Mapping[str, Mapping[str, Any]], *,
                    metric: str = "test_top1") -> list[Comparison]:
    """The paired comparisons of :data:`COMPARISONS` whose arms both ran (A − B by seed)."""
    out = []
    for a, b in COMPARISONS:
        if a in arms and b in arms:
            out.append(paired_comparison(
                {k: r[metric] for k, r in arms[a]["seeds"].items()},
                {k: r[metric] for k, r in arms[b]["seeds"].items()},
                a_label=arms[a]["label"], b_label=arms[b]["label"], metric=metric))
    return out


def results_table(arms: Mapping[str, Mapping[str, Any]], *, top5: bool) -> list[str]:
    """Markdown rows: training data | top-1 (%) | [top-5 (%)] | seeds | top-1 per seed (%)."""
    t5h, t5s = (" top-5 (%) |", "---|") if top5 else ("", "")
    rows = [f"| training data | top-1 (%) |{t5h} seeds | top-1 per seed (%) |",
            f"|---|---|{t5s}---|---|"]
    for arm in arms.values():
        per = ", ".join(f"{100.0 * r['test_top1']:.2f}" for r in arm["seeds"].values())
        t1, t5 = arm["test_top1"], arm["test_top5"]
        cell5 = f" {fmt_pct(t5['mean'], t5['std'])} |" if top5 else ""
        rows.append(f"| {arm['label']} | {fmt_pct(t1['mean'], t1['std'])} |{cell5} "
                    f"{t1['n']} | {per} |")
    return rows


def comparison_table(comps: Sequence[Comparison]) -> list[str]:
    """Markdown rows: comparison | difference (points) | 95 % interval | seeds | verdict."""
    rows = ["| comparison (top-1) | difference (points) | 95 % interval (points) | "
            "paired seeds | verdict |", "|---|---|---|---|---|"]
    for c in comps:
        ci = ("—" if c.low is None else f"{100 * c.low:+.2f} to {100 * c.high:+.2f}")
        rows.append(f"| {c.a} vs {c.b} | {100 * c.mean:+.2f} | {ci} | {c.n} | "
                    f"**{c.verdict}** |")
    return rows


def per_class_accuracy(arms: Mapping[str, Mapping[str, Any]], class_names: Sequence[str]
                       ) -> dict[str, dict[str, float]]:
    """``{stage: {class name: mean top-1 over seeds}}`` for arms whose seeds recorded
    per-class accuracy."""
    out: dict[str, dict[str, float]] = {}
    for stage, arm in arms.items():
        per = [r["test_class_top1"] for r in arm["seeds"].values() if "test_class_top1" in r]
        if per and all(len(p) == len(class_names) for p in per):
            mean = np.mean(np.asarray(per, np.float64), axis=0)
            out[stage] = {n: float(v) for n, v in zip(class_names, mean, strict=True)}
    return out


def per_class_table(arms: Mapping[str, Mapping[str, Any]],
                    per_class: Mapping[str, Mapping[str, float]],
                    class_names: Sequence[str]) -> list[str]:
    """Markdown rows: class | test images | top-1 (%) of each arm (mean over seeds)."""
    stages = [s for s in arms if s in per_class]
    counts: list[Any] = ["?"] * len(class_names)
    for s in stages:
        for r in arms[s]["seeds"].values():
            if "test_class_count" in r:
                counts = r["test_class_count"]
                break
    rows = ["| class | test images | " + " | ".join(f"{arms[s]['label']} (%)" for s in stages)
            + " |", "|---|---|" + "---|" * len(stages)]
    for i, name in enumerate(class_names):
        rows.append(f"| {name} | {counts[i]} | "
                    + " | ".join(f"{100.0 * per_class[s][name]:.2f}" for s in stages) + " |")
    return rows


def skipped_images(outputs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The classifiers' ``skipped_images`` record (``{split: count, "files": [...]}``), the
    first one present (every arm reads the same real data); None when none was recorded."""
    for stage in ROW_LABELS:
        for u in (outputs.get(stage) or {}).get("seeds", {}).values():
            if u.get("skipped_images"):
                return dict(u["skipped_images"])
    return None


def skipped_sentence(rec: Mapping[str, Any]) -> str:
    """``"Skipped as unreadable (data.skip_corrupt): train 3, test 1 (files: …)."``"""
    counts = {k: v for k, v in rec.items() if k != "files" and isinstance(v, int | float)}
    total = int(sum(counts.values()))
    if not total:
        return "No image was skipped as unreadable."
    files = [str(f) for f in rec.get("files", [])]
    tail = f" (files: {', '.join(f'`{f}`' for f in files)})" if files else ""
    return ("Skipped as unreadable (`data.skip_corrupt`): "
            + ", ".join(f"{k} {int(v)}" for k, v in counts.items()) + f"{tail}.")


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
    """Read the results table back from a report (``label -> {top1_mean, top1_std[, top5_mean,
    top5_std]}`` in percent; a std of ``—`` reads as NaN); used by tests and tools that
    compare reports."""
    out: dict[str, dict[str, float]] = {}
    labels = set(ROW_LABELS.values())
    columns: list[str] = []

    def pair(cell: str) -> tuple[float, float]:
        m, _, sd = cell.partition("±")
        sd = sd.strip()
        return float(m), (float("nan") if sd in ("", "—") else float(sd))

    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == "training data":
            columns = cells
        elif len(cells) >= 3 and cells[0] in labels and columns:
            row: dict[str, float] = {}
            for name, key in (("top-1 (%)", "top1"), ("top-5 (%)", "top5")):
                if name in columns:
                    row[f"{key}_mean"], row[f"{key}_std"] = pair(cells[columns.index(name)])
            out[cells[0]] = row
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
                per_class: int = 8, cols: int = 4, size: int = 64) -> dict[str, str]:
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


def _font(px: int) -> Any:
    """Pillow's default font at ``px`` pixels (its bitmap font on old Pillow)."""
    try:
        return ImageFont.load_default(size=px)
    except TypeError:  # Pillow < 10.1: one size only
        return ImageFont.load_default()


def labelled_class_grid(synthetic: Any, class_names: Sequence[str], path: str, *,
                        per_class: int = 8, size: int = 64, pad: int = 2) -> str | None:
    """``path``: the first ``per_class`` synthetic images of every class, one row per class
    with the class name written to the left, each image nearest-upscaled to ``size`` px.
    Returns the path, or None when the store has no images of any listed class."""
    labels = np.asarray(synthetic.labels)
    rows = [(name, np.flatnonzero(labels == c)[:per_class]) for c, name in enumerate(class_names)]
    rows = [(n, r) for n, r in rows if len(r)]
    if not rows:
        return None
    font = _font(max(12, size // 5))
    draw0 = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(int(draw0.textlength(n, font=font)) for n, _ in rows) + 3 * pad
    cols = max(len(r) for _, r in rows)
    canvas = Image.new("RGB", (label_w + cols * (size + pad), len(rows) * (size + pad) + pad),
                       "white")
    draw = ImageDraw.Draw(canvas)
    for i, (name, idx) in enumerate(rows):
        y = pad + i * (size + pad)
        draw.text((pad, y + size // 2), name, fill="black", font=font, anchor="lm")
        for k, j in enumerate(idx):
            tile = _tile([synthetic[int(j)]["image"]], 1, size, pad=0)
            canvas.paste(Image.fromarray(tile), (label_w + k * (size + pad), y))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    canvas.save(path)
    return path


def epoch_curves(outputs: Mapping[str, Any]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``{stage: {seed key: [{"epoch", "train_loss", "test_top1"?}, ...]}}`` from each
    classifier seed's ``metrics.json`` (``epochs``); seeds whose file is missing are left
    out."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for stage in ROW_LABELS:
        for key, u in (outputs.get(stage) or {}).get("seeds", {}).items():
            path = u.get("metrics")
            if not path or not os.path.isfile(path):
                continue
            rows = [{k: e[k] for k in ("epoch", "train_loss", "test_top1") if k in e}
                    for e in read_json(path).get("epochs", [])]
            if rows:
                out.setdefault(stage, {})[key] = rows
    return out


def diffusion_losses(outputs: Mapping[str, Any]) -> list[tuple[int, float]]:
    """``(step, loss)`` of the generator trained in this run (its ``metrics.jsonl``)."""
    tg = outputs.get("train_generator")
    path = os.path.join(str(tg.get("workdir", "")), "metrics.jsonl") if tg else ""
    if not path or not os.path.isfile(path):
        return []
    with open(path) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    return [(int(r["step"]), float(r["loss"])) for r in recs]


def plot_curves(curves: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]],
                path: str, *, dpi: int = 110) -> str | None:
    """``path`` (PNG, Agg canvas): training loss (left) and test top-1 in % (right) per
    epoch, one colour per arm, one line per seed; None when there is no curve."""
    if not curves:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    from matplotlib.ticker import MaxNLocator

    ax_l, ax_a = fig.subplots(1, 2, sharex=True)
    colours = {"train_real": "tab:blue", "train_synthetic": "tab:orange",
               "train_mixed": "tab:green"}
    dashes = {"train_real": "-", "train_synthetic": ":", "train_mixed": "--"}
    for stage, seeds in curves.items():
        for j, rows in enumerate(seeds.values()):
            label = ROW_LABELS[stage] if j == 0 else None
            style = dict(color=colours.get(stage), linestyle=dashes.get(stage, "-"),
                         alpha=0.85, marker="o", markersize=3)
            ax_l.plot([r["epoch"] for r in rows], [r["train_loss"] for r in rows],
                      label=label, **style)
            acc = [(r["epoch"], 100.0 * r["test_top1"]) for r in rows if "test_top1" in r]
            if acc:
                ax_a.plot(*zip(*acc, strict=True), label=label, **style)
    ax_l.set(xlabel="epoch", ylabel="training loss (epoch mean)", title="training loss")
    ax_a.set(xlabel="epoch", ylabel="test top-1 (%)", title="test accuracy")
    for ax in (ax_l, ax_a):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save_png(fig, (ax_l, ax_a), path, dpi)


def _save_png(fig: Any, axes: Sequence[Any], path: str, dpi: int) -> str:
    """Grid and legend on ``axes``, then ``fig`` written to ``path`` (PNG); returns ``path``."""
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def plot_diffusion_loss(losses: Sequence[tuple[int, float]], path: str, *,
                        dpi: int = 110) -> str | None:
    """``path`` (PNG): the diffusion model's loss per step and its running mean."""
    if not losses:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = np.asarray([s for s, _ in losses])
    vals = np.asarray([v for _, v in losses], np.float64)
    w = max(1, len(vals) // 20)
    smooth = np.convolve(vals, np.ones(w) / w, mode="valid")
    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot(steps, vals, color="tab:gray", alpha=0.4, label="per step")
    ax.plot(steps[w - 1:], smooth, color="tab:red", label=f"running mean ({w} steps)")
    ax.set(xlabel="step", ylabel="EDM loss", title="diffusion model training loss")
    return _save_png(fig, (ax,), path, dpi)


def tensorboard_dirs(outputs: Mapping[str, Any]) -> list[str]:
    """The TensorBoard log directories of every trainer in this run that has one."""
    dirs = []
    tg = outputs.get("train_generator")
    if tg:
        dirs.append(os.path.join(str(tg["workdir"]), "tb"))
    for stage in ROW_LABELS:
        for u in (outputs.get(stage) or {}).get("seeds", {}).values():
            dirs.append(os.path.join(str(u["workdir"]), "tb"))
    return [d for d in dirs if os.path.isdir(d)]


# --------------------------------------------------------------------------------------------
# Stages in run order


def stage_rows(config: ml_collections.ConfigDict, book: Mapping[str, Any]
               ) -> list[dict[str, Any]]:
    """The recorded stages in run order (the config's stage list, then the canonical order
    for stages it no longer lists): ``{"stage", "status", "seconds", "attempts"}``."""
    listed = stage_list(config)

    def rank(name: str) -> tuple[int, int]:
        if name in listed:
            return (0, listed.index(name))
        return (1, STAGES.index(name) if name in STAGES else len(STAGES))

    return [{"stage": name, "status": rec.get("status"), "seconds": rec.get("seconds"),
             "attempts": int(rec.get("attempts", 1))}
            for name, rec in sorted(book.items(), key=lambda kv: rank(kv[0]))]


# --------------------------------------------------------------------------------------------
# results.json / results.csv


CSV_COLUMNS = ("section", "name", "seed", "metric", "value", "n", "low", "high", "verdict")


def results_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rows of ``results.csv`` (columns :data:`CSV_COLUMNS`) from ``results.json``'s
    content: per seed, per arm (mean / std), per class, comparisons, fidelity, stages."""
    rows: list[dict[str, Any]] = []

    def add(section: str, name: str, metric: str, value: Any, **kw: Any) -> None:
        rows.append({"section": section, "name": name, "metric": metric, "value": value, **kw})

    names = results.get("data", {}).get("class_names", [])
    for arm in results.get("arms", {}).values():
        for key, rec in arm["seeds"].items():
            for m in ("test_top1", "test_top5"):
                add("seed", arm["label"], m, rec[m], seed=key)
            for i, v in enumerate(rec.get("test_class_top1", [])):
                add("seed_class", arm["label"], f"test_top1[{names[i] if i < len(names) else i}]",
                    v, seed=key)
        for m in ("test_top1", "test_top5"):
            s = arm[m]
            add("arm", arm["label"], f"{m}_mean", s["mean"], n=s["n"])
            add("arm", arm["label"], f"{m}_std", s["std"], n=s["n"])
    for stage, per in results.get("per_class", {}).items():
        label = results["arms"][stage]["label"]
        for cls, v in per.items():
            add("class", label, f"test_top1[{cls}]", v)
    for c in results.get("comparisons", []):
        add("comparison", f"{c['a']} vs {c['b']}", f"{c['metric']}_difference", c["mean"],
            n=c["n"], low=c["low"], high=c["high"], verdict=c["verdict"])
    fid = results.get("fidelity") or {}
    for m in ("fid", "kid_mean", "kid_std", "precision", "recall", "density", "coverage"):
        if m in fid:
            add("fidelity", str(fid.get("extractor", "")), m, fid[m])
    for st in results.get("stages", []):
        add("stage", st["stage"], "seconds", st["seconds"], n=st["attempts"])
    return rows


def write_results(workdir: str, results: Mapping[str, Any]) -> tuple[str, str]:
    """Write ``results.json`` and ``results.csv`` into ``workdir``; returns both paths."""
    jpath, cpath = os.path.join(workdir, "results.json"), os.path.join(workdir, "results.csv")
    write_json(jpath, results)
    write_csv(cpath, results_rows(results))
    return jpath, cpath


def write_csv(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """``rows`` as CSV with the columns :data:`CSV_COLUMNS` (missing values empty),
    written atomically."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_COLUMNS})
    atomic_write(path, buf.getvalue())


# --------------------------------------------------------------------------------------------
# The report


def _rel(path: str, workdir: str) -> str:
    return os.path.relpath(path, workdir)


def write_report(config: ml_collections.ConfigDict, outputs: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``<workdir>/report.md``, ``results.json``, ``results.csv`` and ``figures/``
    from the stage ``outputs``; returns ``{"report", "results_json", "results_csv",
    "grids": {class: png}, "samples": png or None, "curves": png or None,
    "diffusion_loss": png or None, "pca": png or None}``."""
    workdir = os.path.abspath(str(config.workdir))
    fig_dir = os.path.join(workdir, "figures")
    main = jax.process_index() == 0
    rep_cfg = config.get("report", ml_collections.ConfigDict())
    derived = run_title(config, outputs)
    given = str(rep_cfg.get("title", "") or "")
    title = given or derived
    lines: list[str] = [f"# {title}", ""]
    if given:
        lines += [f"Run: {derived}.", ""]
    lines += [run_description(config, outputs), ""]

    prep = outputs.get("prepare", {})
    class_names = list(prep.get("class_names", []))
    skipped = skipped_images(outputs)
    lines += ["## Data", ""]
    if prep:
        lines += [f"Real data: `{prep.get('description', '')}` — {prep['num_train']:,} training "
                  f"images in {prep['num_classes']} classes, evaluated on "
                  f"{prep['num_test']:,} test images (the full test split). Row list: "
                  f"`{_rel(prep['subset_file'], workdir)}`.", ""]
    if skipped is not None:
        lines += [skipped_sentence(skipped), ""]
    gen_sentence = describe_generator(config, outputs)
    lines += ["## Generator", "", gen_sentence, ""]
    gen_cfg = config.get("generator", None)
    if gen_cfg is not None and str(gen_cfg.get("kind", "")) == "edm":
        sentence = generated_accuracy_sentence(outputs)
        if sentence:
            lines += [sentence, ""]

    arms = arm_results(outputs)
    comps = arm_comparisons(arms)
    num_classes = int(prep.get("num_classes", 0) or len(class_names) or 0)
    top5 = num_classes > 5
    per_class = per_class_accuracy(arms, class_names) if class_names else {}
    curves = epoch_curves(outputs)
    curves_png = diff_png = None
    if main:
        curves_png = plot_curves(curves, os.path.join(fig_dir, "curves.png"))
        diff_png = plot_diffusion_loss(diffusion_losses(outputs),
                                       os.path.join(fig_dir, "diffusion_loss.png"))
    if arms:
        n_txt = ", ".join(f"{a['label']} n = {a['test_top1']['n']}" for a in arms.values())
        lines += ["## Classification", "",
                  "Test accuracy on the full test split after the last epoch: mean ± sample "
                  f"standard deviation (ddof = 1) over the training seeds ({n_txt})"
                  + ("" if top5 else f"; top-5 is not shown for {num_classes} classes") + ".",
                  ""]
        lines += results_table(arms, top5=top5) + [""]
        for stage, arm in arms.items():
            links = ", ".join(f"[seed {u['seed']}]({_rel(u['metrics'], workdir)})"
                              for u in outputs[stage]["seeds"].values() if u.get("metrics"))
            if links:
                lines.append(f"- {arm['label']}: {links}")
        lines.append("")
        if comps:
            lines += ["### Comparisons", "",
                      "Paired by seed: the top-1 difference A − B per seed, its mean, and the "
                      "95 % Student-t interval mean ± t(0.975, n − 1) · s / √n over the n "
                      "seeds both arms ran. *Within noise*: the interval contains 0, the "
                      "seeds do not tell the arms apart.", ""]
            lines += comparison_table(comps) + [""]
            lines += [f"- {describe(c)}" for c in comps] + [""]

    if curves_png or diff_png:
        lines += ["## Training curves", ""]
        if curves_png:
            lines += [f"![training curves]({_rel(curves_png, workdir)})", "",
                      "Left: training loss per epoch (mean over the epoch's steps); right: "
                      "test top-1 at each evaluated epoch (classifier `eval_every_epochs`; 0 = "
                      "after the last epoch only). One colour per arm, one line per seed.", ""]
        if diff_png:
            lines += [f"![diffusion loss]({_rel(diff_png, workdir)})", "",
                      "The diffusion model's training loss per step (EDM loss, from "
                      "`train_generator/metrics.jsonl`).", ""]
    tb_dirs = tensorboard_dirs(outputs)
    if tb_dirs:
        lines += ["TensorBoard logs: " + ", ".join(f"`{_rel(d, workdir)}`" for d in tb_dirs)
                  + f"; all at once: `tensorboard --logdir {workdir}`.", ""]

    if per_class:
        lines += ["## Per-class accuracy", "",
                  "Test top-1 per class, mean over each arm's seeds.", ""]
        lines += per_class_table(arms, per_class, class_names) + [""]

    ev = outputs.get("evaluate")
    if ev:
        lines += ["## Fidelity and diversity", "",
                  f"{ev['num_synthetic']:,} synthetic images against {ev['num_real']:,} real "
                  f"`{ev['real_split']}` images; features: `{ev['extractor']}` "
                  f"({ev['feature_dim']}-d). Numbers under different extractors are not "
                  f"comparable. Source: [{_rel(ev['metrics'], workdir)}]"
                  f"({_rel(ev['metrics'], workdir)}).", ""]
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
    samples_png = None
    gen = outputs.get("generate")
    if gen and prep and main:
        real = open_real_source(config.data, str(config.data.get("train_split", "train")),
                                subset=True)
        syn = SyntheticStore(gen["store"])
        per = int(rep_cfg.get("samples_per_class", 8))
        grids = class_grids(real, syn, class_names, fig_dir, per_class=per)
        samples_png = labelled_class_grid(syn, class_names,
                                          os.path.join(fig_dir, "samples_by_class.png"),
                                          per_class=per)
    if grids or samples_png:
        lines += ["## Samples", ""]
        if samples_png:
            lines += ["Synthetic images, one row per class:", "",
                      f"![synthetic samples by class]({_rel(samples_png, workdir)})", ""]
        if grids:
            lines += ["Per class: real training images (left) | synthetic images (right).", "",
                      "| class | real &#124; synthetic |", "|---|---|"]
            for name, path in grids.items():
                lines.append(f"| {name} | ![{name}]({_rel(path, workdir)}) |")
            lines.append("")

    pca = outputs.get("pca")
    if pca:
        r = pca["explained_variance_ratio"]
        lines += ["## PCA", "",
                  f"2-D PCA of `{pca['extractor']}` features of {pca['num_real']} real and "
                  f"{pca['num_synthetic']} synthetic images (PC1 {100 * r[0]:.1f}%, PC2 "
                  f"{100 * r[1]:.1f}% of the variance).", "",
                  f"![PCA]({_rel(pca['plot'], workdir)})", ""]

    book_path = os.path.join(workdir, "stages.json")
    stages = stage_rows(config, read_json(book_path)["stages"]) if os.path.exists(
        book_path) else []
    if stages:
        lines += ["## Stages", "", "In run order.", "",
                  "| stage | wall time (s) | attempts | sub-workdir |", "|---|---|---|---|"]
        for st in stages:
            secs = st["seconds"]
            if st["stage"] == "report" and st["status"] != "done":
                secs_txt = "(writing this report)"
            else:
                secs_txt = _num(secs, 1) if secs is not None else "running"
            sub = "—" if st["stage"] == "report" else f"`{st['stage']}/`"
            lines.append(f"| {st['stage']} | {secs_txt} | {st['attempts']} | {sub} |")
        lines.append("")

    results = {
        "format": RESULTS_FORMAT,
        "title": title,
        "config": {"name": str(config.get("name", "") or ""),
                   "variant": str(config.get("variant", "") or "")},
        "data": {"name": data_name(config.data), "path": str(config.data.get("path", "")),
                 "class_names": class_names, "num_classes": num_classes,
                 "num_train": prep.get("num_train"), "num_test": prep.get("num_test"),
                 "counts_per_class": prep.get("counts_per_class", {}),
                 "skipped_images": skipped},
        "generator": {"identity": generator_identity(config, outputs),
                      "description": gen_sentence},
        "units": "accuracies and differences are fractions in [0, 1]; report.md prints "
                 "percent and points",
        "arms": arms,
        "comparisons": [{**c.to_dict(), "text": describe(c)} for c in comps],
        "per_class": per_class,
        "curves": curves,
        "fidelity": ({k: v for k, v in ev.items() if k != "controls"} if ev else None),
        "stages": stages,
    }
    lines += ["## Results files", "",
              "Every number in this report, per arm, seed and class, with the comparisons' "
              "intervals and verdicts: [`results.json`](results.json), "
              "[`results.csv`](results.csv) (accuracies as fractions).", ""]

    lines += ["## Resolved config", ""]
    if config.get("description", ""):
        lines += [f"The config's own description (of its defaults): {config.description}", ""]
    lines += ["Each stage's derived config is in `<stage>/stage_config.json` (EDM training: "
              "`train_generator/config.json`).", "", "```json",
              json.dumps(to_dict(config), indent=2, sort_keys=True), "```", ""]
    path = os.path.join(workdir, "report.md")
    jpath, cpath = os.path.join(workdir, "results.json"), os.path.join(workdir, "results.csv")
    if main:
        write_results(workdir, results)
        atomic_write(path, "\n".join(lines))
    return {"report": path, "results_json": jpath, "results_csv": cpath, "grids": grids,
            "samples": samples_png, "curves": curves_png, "diffusion_loss": diff_png,
            "pca": pca["plot"] if pca else None}
