"""DiffuseMix's edit stage: every real image edited with every prompt (or strength).

Two editors write the same store format (``<store_dir>/edits``, source id
:data:`EDIT_SOURCE`), one record per edit ``e = i · P + j`` (real row ``i``, prompt ``j`` of
``P``, :func:`plan_edits`) drawing everything from ``fold_in(edit_key, e)`` (:func:`run_keys`):

- ``diffusemix.editor = 'ip2p'`` (:func:`generate_edits`): InstructPix2Pix (Brooks et al.
  2023) with dual guidance ``ε̃ = ε(∅,∅) + s_I (ε(c_I,∅) − ε(∅,∅)) + s_T (ε(c_I,c_T) −
  ε(c_I,∅))`` on inputs resized to ``diffusemix.resolution``²; the prompts are DiffuseMix's
  nine (:data:`DIFFUSEMIX_PROMPTS`) or a subset (:func:`resolve_prompts`). The model is
  ``diffusemix.model`` or, with ``diffusemix.tiny``, a tiny random one
  (:func:`augdiff.sd.tiny.load_or_make_tiny`).
- ``diffusemix.editor = 'edm'`` (:func:`generate_edits_edm`): SDEdit with Heun from
  ``σ_start`` under the class label with an EDM model augdiff trained
  (:mod:`augdiff.edm.edit`); the strengths (:func:`edm_strengths`) play the prompts' role.

Edits are resized back to ``data.image_size`` (and, for SHB, also kept at the resolution they
were made at, :func:`full_edits_dir`). Black and non-finite outputs are dropped
(:func:`output_status`), counted in the manifest and logged beside the store
(:class:`FilterLog`) so a resumed run neither regenerates nor recounts them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from augdiff import distributed
from augdiff.data.pixels import to_signed, to_signed_rgb, unit_to_store
from augdiff.data.store import StoreWriter, example_keys, pending_batches
from augdiff.edm import edit as edm_edit
from augdiff.files import read_json, write_json
from augdiff.sd import loading, pipelines, tiny
from augdiff.sd.generate import model_identity_of

DIFFUSEMIX_PROMPTS = (
    "Autumn",
    "snowy",
    "watercolor art",
    "sunset",
    "rainbow",
    "aurora",
    "mosaic",
    "ukiyo-e",
    "a sketch with crayon",
)
"""DiffuseMix's bank of conditional prompts (Islam et al. 2024, §3.1)."""

EDIT_SOURCE, HYBRID_SOURCE = 1, 2
"""Source ids of the edits and of the hybrids in their stores."""
FILTER_REASONS = ("black", "nonfinite")
EDITORS = ("ip2p", "edm")


def resolve_prompts(prompts: str | Sequence[str]) -> tuple[str, ...]:
    """The prompt bank: ``'all'`` (or ``''``) = DiffuseMix's nine; a ``|``-separated string
    (``"sunset|snowy"``) or a sequence of prompts = that subset (a single prompt is seed 000's
    setting). Prompts must be non-empty and distinct."""
    if isinstance(prompts, str):
        text = prompts.strip()
        if text in ("", "all"):
            out = DIFFUSEMIX_PROMPTS
        else:
            out = tuple(p.strip() for p in text.split("|"))
    else:
        out = tuple(str(p).strip() for p in prompts)
    if not out or any(not p for p in out):
        raise ValueError(f"diffusemix.prompts: empty prompt in {prompts!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"diffusemix.prompts: duplicate prompts in {out}")
    return out


def plan_edits(num_real: int, num_prompts: int) -> list[dict[str, Any]]:
    """Every edit of the run, numbered ``e = i · P + j``: key ``edit-r<i>-p<j>``, parent ``i``,
    prompt index ``j``."""
    if num_real <= 0 or num_prompts <= 0:
        raise ValueError(f"need real images and prompts, got {num_real} and {num_prompts}")
    return [
        dict(key=f"edit-r{i:07d}-p{j:02d}", example=i * num_prompts + j, parent=i, prompt_index=j)
        for i in range(num_real)
        for j in range(num_prompts)
    ]


def run_keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(edit_key, hybrid_key, fractal_key) = split(PRNGKey(seed), 3)`` (see module doc)."""
    k = jax.random.split(jax.random.PRNGKey(int(seed)), 3)
    return k[0], k[1], k[2]


def generation_seed(config: Any) -> int:
    """``diffusemix.seed``, or the run's ``seed`` when it is negative or unset."""
    seed = config.diffusemix.get("seed", -1)
    return int(config.seed) if seed is None or int(seed) < 0 else int(seed)


def edit_images(
    components: Any,
    params: dict,
    images: np.ndarray,
    prompt_embeds: jax.Array,
    keys: jax.Array,
    *,
    resolution: int,
    text_guidance: float = 4.0,
    image_guidance: float = 1.5,
    num_steps: int = 100,
    sampler: str = "euler_ancestral",
    mesh: Mesh | None = None,
) -> np.ndarray:
    """InstructPix2Pix edits of uint8 images [N, h, w, C] (resized to ``resolution``²) with
    encoded prompts [N, T, D] and row keys [N]; float32 [N, res, res, 3] in [0, 1], *not*
    sanitised (a non-finite output stays non-finite for :func:`output_status`)."""
    x = to_signed_rgb(images, int(resolution))
    return pipelines.instruct_pix2pix(
        components,
        params,
        x,
        prompt_embeds,
        keys,
        text_guidance=float(text_guidance),
        image_guidance=float(image_guidance),
        num_steps=int(num_steps),
        sampler=sampler,
        mesh=mesh,
    )


def output_status(images01: np.ndarray, black_threshold: float = 0.0) -> np.ndarray:
    """Per image: ``'ok'``, ``'nonfinite'`` (any NaN/inf) or ``'black'`` (``max ≤ threshold``,
    in [0, 1] units; 0 = exactly black, as a safety checker's replacement).

    This follows the intent stated by DiffuseMix (drop black, i.e. failed, edits). DiffuseMix's
    public ``is_black_image`` actually tests the *white* bin: it flags an image whose
    luminance histogram has more than 90 % of pixels at 255 and every other bin under 10 %;
    that check is not reproduced here."""
    x = np.asarray(images01, np.float32)
    finite = np.isfinite(x).reshape(len(x), -1).all(axis=1)
    peak = np.where(np.isfinite(x), x, 0.0).reshape(len(x), -1).max(axis=1)
    return np.where(~finite, "nonfinite", np.where(peak <= black_threshold, "black", "ok"))


class FilterLog:
    """Keys dropped by the output filter, kept beside the store (``filtered-p<i>.json``) so a
    resumed run neither regenerates them nor counts them twice.

    The manifest counter of a filtered key is committed with the next shard; the log is
    rewritten (atomically) right after that commit, so the two agree except for a kill between
    those two renames.
    """

    def __init__(self, root: str, process_index: int):
        self.path = os.path.join(root, f"filtered-p{process_index:05d}.json")
        self.keys: dict[str, str] = {}
        if os.path.exists(self.path):
            self.keys = dict(read_json(self.path))
        self._pending: dict[str, str] = {}

    def add(self, key: str, reason: str) -> None:
        self._pending[key] = reason

    def __contains__(self, key: str) -> bool:
        return key in self.keys or key in self._pending

    def commit(self) -> None:
        if not self._pending:
            return
        self.keys.update(self._pending)
        self._pending.clear()
        write_json(self.path, self.keys, indent=None)


def load_ip2p(cfg: Any, workdir: str, seed: int) -> tuple[Any, dict]:
    """``(components, params)`` of the InstructPix2Pix model ``cfg.model``; with an empty path
    and ``cfg.tiny`` a tiny random-weight one is made in ``<workdir>/tiny_ip2p`` (process 0;
    :func:`augdiff.sd.tiny.load_or_make_tiny`)."""
    return tiny.load_or_make_tiny(
        cfg.get("model", ""), kind="ip2p", dtype=cfg.get("dtype", "float32"),
        tiny=bool(cfg.get("tiny", False)), tiny_dir=os.path.join(workdir, "tiny_ip2p"),
        seed=int(seed),
        missing="config.diffusemix.model is empty: give an InstructPix2Pix folder / hub id "
                "(e.g. timbrooks/instruct-pix2pix) or set diffusemix.tiny=True")


def full_edits_dir(edits_dir: str) -> str:
    """Where the edits at their own resolution live beside ``edits_dir`` (``edits_full``)."""
    return os.path.join(os.path.dirname(os.path.abspath(edits_dir)), "edits_full")


def keeps_full_edits(config: Any) -> bool:
    """Whether the edit stage also stores every edit at the resolution it was made at
    (``diffusemix.keep_full_edits``, on by itself for SHB when that resolution exceeds
    ``data.image_size``: SHB blends at the edit's resolution)."""
    dm = config.diffusemix
    return bool(dm.get("keep_full_edits", False)) or (
        str(dm.hybrid.get("mask", "")) == "semantic"
        and int(dm.resolution) > int(config.data.image_size))


def generate_edits(
    config: Any, real: Any, prompts: tuple[str, ...], edits_dir: str, edit_key: jax.Array,
    progress: bool,
) -> dict[str, Any]:
    """The InstructPix2Pix edits of the run into ``edits_dir`` (this process's share of
    :func:`plan_edits`; resumable). Returns the stage's summary."""
    dm = config.diffusemix
    seed = generation_seed(config)
    components, params = load_ip2p(dm, config.workdir, seed)
    n_real = len(real) if not int(dm.max_images) else min(len(real), int(dm.max_images))
    plan = plan_edits(n_real, len(prompts))
    mine = plan[distributed.process_slice(len(plan))]
    mesh = distributed.make_mesh(devices=jax.local_devices())
    params = pipelines.place_params(params, mesh)
    model = loading.model_label(components)
    settings = dict(
        text_guidance=float(dm.text_guidance),
        image_guidance=float(dm.image_guidance),
        steps=int(dm.steps),
        sampler=str(dm.sampler),
        resolution=int(dm.resolution),
    )
    manifest = dict(model=model, prompts=list(prompts), seed=seed, num_classes=real.num_classes,
                    class_names=list(real.class_names), image_size=int(config.data.image_size),
                    **settings)
    prompt_embeds = pipelines.encode_prompts(components, params, list(prompts))  # once per run
    size, bs = int(config.data.image_size), int(dm.batch_size)
    counts = dict.fromkeys(FILTER_REASONS, 0)
    written = 0
    shard_size = int(dm.get("shard_size", 256))
    res = settings["resolution"]
    keep_full = keeps_full_edits(config) and res > size
    with contextlib.ExitStack() as stack:
        model_id = model_identity_of(components)
        writer = stack.enter_context(StoreWriter(edits_dir, method="diffusemix", model=model_id,
                                                 config=manifest, shard_size=shard_size))
        # The same edits at the resolution they were made at (SHB blends there); written
        # first, committed at the same shard boundaries as the edits store.
        full_writer = stack.enter_context(StoreWriter(
            full_edits_dir(edits_dir), method="diffusemix", config=dict(manifest,
                                                                         image_size=res),
            model=model_id, shard_size=shard_size)) if keep_full else None
        filtered = FilterLog(edits_dir, writer.process_index)
        for batch in pending_batches(writer, mine, bs, desc="diffusemix edits", skip=filtered):
            parents = np.stack([real.image(it["parent"]) for it in batch])  # never substituted
            j = np.asarray([it["prompt_index"] for it in batch])
            keys = example_keys(edit_key, [it["example"] for it in batch])
            # Pad to a fixed batch (one compilation); per-row keys make rows independent.
            (parents_p, j_p, keys_p), m = distributed.pad_to_multiple((parents, j, keys), bs)
            out = edit_images(
                components, params, parents_p, prompt_embeds[j_p], keys_p,
                resolution=settings["resolution"], text_guidance=settings["text_guidance"],
                image_guidance=settings["image_guidance"], num_steps=settings["steps"],
                sampler=settings["sampler"], mesh=mesh,
            )[:m]
            status = output_status(out, float(dm.black_threshold))
            before = writer.num_written
            for it, img, st in zip(batch, out, status, strict=True):
                if st != "ok":
                    writer.note(f"filtered_{st}")
                    filtered.add(it["key"], str(st))
                    counts[str(st)] += 1
                    continue
                prov = dict(
                    parent=int(it["parent"]),
                    parent_name=real.name_of(int(it["parent"])),
                    prompt=prompts[it["prompt_index"]],
                    prompt_index=int(it["prompt_index"]),
                    seed=seed,
                    example=int(it["example"]),
                    guidance=settings["text_guidance"],
                    image_guidance=settings["image_guidance"],
                    steps=settings["steps"],
                    sampler=settings["sampler"],
                    resolution=settings["resolution"],
                    model=model,
                )
                label = int(real.labels[it["parent"]])
                if full_writer is not None:
                    full_writer.add(it["key"], unit_to_store(img[None], res)[0], label,
                                    EDIT_SOURCE, prov)
                written += writer.add(it["key"], unit_to_store(img[None], size)[0], label,
                                      EDIT_SOURCE, prov)
            if writer.num_written != before:  # a shard (and its counters) was committed
                filtered.commit()
        if full_writer is not None:
            full_writer.flush()
        writer.flush()
        filtered.commit()
    return dict(planned=len(plan), this_process=len(mine), written=written,
                filtered_black=counts["black"], filtered_nonfinite=counts["nonfinite"],
                model=model, full_resolution=bool(keep_full))


def edm_strengths(dm: Any) -> tuple[str, ...]:
    """The EDM editor's edit strengths ``σ_start`` (``diffusemix.edm.sigma_start``, e.g.
    ``"1.0"`` or ``"0.5|2.0"``): they play the role of DiffuseMix's prompts (one edit of
    every image per strength)."""
    raw = str(dm.edm.sigma_start)
    try:
        vals = tuple(float(v) for v in raw.split("|"))
    except ValueError:
        raise ValueError(f"diffusemix.edm.sigma_start must read '1.0' or '0.5|2.0', "
                         f"got {raw!r}") from None
    if any(v <= 0 for v in vals) or len(set(vals)) != len(vals):
        raise ValueError(f"diffusemix.edm.sigma_start: strengths must be distinct and > 0: {raw!r}")
    return tuple(f"{v:g}" for v in vals)


def generate_edits_edm(
    config: Any, real: Any, strengths: tuple[str, ...], edits_dir: str, edit_key: jax.Array,
    progress: bool,
) -> dict[str, Any]:
    """Edits with an EDM model augdiff trained (``diffusemix.editor = 'edm'``): SDEdit with
    Heun from ``σ_start`` under the class label (:mod:`augdiff.edm.edit`), written in the
    InstructPix2Pix edits' store format; the ``prompt`` field records strength and label."""
    dm = config.diffusemix
    seed = generation_seed(config)
    workdir = str(dm.edm.workdir)
    if not workdir:
        raise ValueError("diffusemix.editor='edm' needs diffusemix.edm.workdir (an "
                         "`augdiff train-diffusion` workdir)")
    loaded = edm_edit.load_edm(workdir)
    if loaded["class_conditional"] and loaded["num_classes"] < real.num_classes:
        raise ValueError(f"EDM model in {workdir} knows {loaded['num_classes']} classes, the "
                         f"data has {real.num_classes}")
    steps = int(dm.edm.steps)
    fns = [edm_edit.make_edit_fn(loaded, sigma_start=float(v), num_steps=steps)
           for v in strengths]
    n_real = len(real) if not int(dm.max_images) else min(len(real), int(dm.max_images))
    plan = plan_edits(n_real, len(strengths))
    mine = plan[distributed.process_slice(len(plan))]
    model = f"edm:{loaded['checkpoint']}"
    manifest = dict(model=model, editor="edm", prompts=[edm_edit.edit_prompt(float(v), -1)
                                                        for v in strengths],
                    sigma_start=[float(v) for v in strengths], steps=steps, sampler="heun",
                    seed=seed, num_classes=real.num_classes, class_names=list(real.class_names),
                    image_size=int(config.data.image_size), resolution=int(loaded["size"]))
    size, bs = int(config.data.image_size), int(dm.batch_size)
    counts = dict.fromkeys(FILTER_REASONS, 0)
    written = 0
    with StoreWriter(edits_dir, method="diffusemix", config=manifest,
                     shard_size=int(dm.get("shard_size", 256))) as writer:
        filtered = FilterLog(edits_dir, writer.process_index)
        for batch in pending_batches(writer, mine, bs, desc="edm edits", skip=filtered):
            parents = np.stack([real.image(it["parent"]) for it in batch])  # never substituted
            labels = np.asarray([int(real.labels[it["parent"]]) for it in batch], np.int32)
            j = np.asarray([it["prompt_index"] for it in batch])
            keys = example_keys(edit_key, [it["example"] for it in batch])
            (parents_p, labels_p, j_p, keys_p), m = distributed.pad_to_multiple(
                (parents, labels, j, keys), bs)
            out = np.zeros((len(parents_p), loaded["size"], loaded["size"],
                            loaded["channels"]), np.float32)
            for k, fn in enumerate(fns):
                if np.any(j_p == k):
                    y = np.asarray(fn(loaded["params"], keys_p, to_signed(parents_p),
                                      jnp.asarray(labels_p)))
                    out = np.where((j_p == k)[:, None, None, None], y, out)
            out01 = (out[:m] + 1.0) / 2.0
            status = output_status(out01, float(dm.black_threshold))
            before = writer.num_written
            for it, img, st, lab in zip(batch, out01, status, labels, strict=True):
                if st != "ok":
                    writer.note(f"filtered_{st}")
                    filtered.add(it["key"], str(st))
                    counts[str(st)] += 1
                    continue
                strength = float(strengths[it["prompt_index"]])
                prov = dict(parent=int(it["parent"]), parent_name=real.name_of(int(it["parent"])),
                            prompt=edm_edit.edit_prompt(strength, int(lab)),
                            prompt_index=int(it["prompt_index"]), seed=seed,
                            example=int(it["example"]), sigma_start=strength, steps=steps,
                            sampler="heun", resolution=int(loaded["size"]), model=model)
                written += writer.add(it["key"], unit_to_store(img[None], size)[0], int(lab),
                                      EDIT_SOURCE, prov)
            if writer.num_written != before:
                filtered.commit()
        writer.flush()
        filtered.commit()
    return dict(planned=len(plan), this_process=len(mine), written=written,
                filtered_black=counts["black"], filtered_nonfinite=counts["nonfinite"],
                model=model)
