"""SHB measured at the edit resolution of the paper, 256² (seed 000 §3.3-3.4).

For a batch of real images and their edits (both brought to 256² bicubically, as
InstructPix2Pix's inputs are), the SHB mask of :func:`augdiff.methods.semantic.shb_mask` is
built from CLIP crop embeddings (32 px at stride 16 → 15 × 15) and measured with
:func:`augdiff.methods.semantic.mask_statistics`: the share of pixels taken from the original
(mean and spread over the batch) and the share left soft by the k = 5 blur. The same is
reported for the earlier geometry (a 7 × 7 map at 32², ViT-B/32's token grid at the training
resolution) and for the seed 000 code's blur options, to show what the resolution changes.

Which CLIP is used is recorded: with the tiny RANDOM CLIP the similarity values carry no
semantics, so the numbers show the p50 threshold and the blur geometry, not what a trained
CLIP would select.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from augdiff.data.pixels import resize_uint8
from augdiff.data.sources import open_real_source
from augdiff.data.store import SyntheticStore
from augdiff.methods import diffusemix as DM
from augdiff.methods import hybrids, semantic, shb


def measure(
    original: np.ndarray, generated: np.ndarray, labels: np.ndarray,
    embed_fn: Callable[[Any], Any], text_emb: Any, *, resolution: int = 256,
) -> dict[str, Any]:
    """Mask statistics of SHB on uint8 pairs [N, h, w, 3] at ``resolution``² (and at 32² with a
    7 × 7 map for contrast). Returns ``{setting: mask_statistics}``."""
    out: dict[str, Any] = {}
    g = hybrids.to_float(resize_uint8(generated, resolution))
    crop, stride = semantic.scaled_crop_geometry(resolution)
    s = semantic.crop_similarity_map(embed_fn, g, text_emb, jnp.asarray(labels), crop=crop,
                                     stride=stride)
    out["grid"] = list(s.shape[1:])
    for name, kw in (("paper (P50, k=5 reflect)", {}),
                     ("code blur (scipy σ=5/3)", {"smoothing": "code"}),
                     ("code blur + binary", {"smoothing": "code", "binary": True}),
                     ("code P30 + binary", {"smoothing": "code", "binary": True,
                                            "percentile": 30.0})):
        m = semantic.shb_mask(s, resolution, resolution, **kw)
        out[f"{resolution}: {name}"] = semantic.mask_statistics(m)
        if not kw:  # what the blend's resize to the training size leaves soft
            m32 = jax.image.resize(m, (m.shape[0], 32, 32, 1), "linear", antialias=True)
            out[f"{resolution} → 32: paper mask as resized with the blend"] = \
                semantic.mask_statistics(m32)
    # The earlier geometry: a 7 × 7 map (ViT-B/32 tokens) upsampled to the 32² training image;
    # the 7 × 7 map is the 15 × 15 one pooled, so both see the same CLIP scores.
    s7 = semantic.upsample_bilinear(s, 7, 7)
    out["32: 7x7 map (tokens at the training resolution)"] = semantic.mask_statistics(
        semantic.shb_mask(s7, 32, 32))
    return out


def run_shb_measure(config: Any, rows: Mapping[str, Mapping[str, Any]],
                    log: Callable[[str], None]) -> dict[str, Any]:
    """Table-experiment analysis ``shb_measure``: SHB masks at 256² for up to
    ``config.shb_measure.max_images`` (default 64) edits of the ``shb`` row's edits store."""
    opts = config.get("shb_measure", {}) or {}
    n = int(opts.get("max_images", 64))
    row = "shb" if "shb" in rows else next(iter(rows))
    sub = rows[row]["generate_config"]
    edits_dir = str(sub.diffusemix.get("edits_store", "") or "") or DM.store_dirs(sub)[0]
    edits = SyntheticStore(edits_dir)
    real = open_real_source(sub.data, str(sub.data.get("train_split", "train")))
    idx = np.random.default_rng(0).permutation(len(edits))[:n]
    provs = [edits.provenance(int(i)) for i in idx]
    generated = np.stack([edits[int(i)]["image"] for i in idx])
    original = np.stack([real[int(p["parent"])]["image"] for p in provs])
    labels = np.asarray([int(edits[int(i)]["label"]) for i in idx])
    workdir = os.path.join(str(config.workdir), "analyses")
    model, params, tok, label = shb.load_clip(sub.diffusemix.shb, workdir, 0)
    text = shb.class_text_embeddings(model, params, tok, real.class_names,
                                     str(sub.diffusemix.shb.template))
    stats = measure(original, generated, labels, semantic.clip_image_embedding_fn(model, params),
                    text)
    caveat = (" (RANDOM weights: the masks show the p50 threshold and the blur geometry, not "
              "semantics)") if label == "tiny-random" else ""
    lines = [f"SHB masks of {len(idx)} edits of row `{row}` (originals and edits resized to "
             f"256² bicubically), similarity from CLIP `{label}`{caveat}; map "
             f"{stats['grid'][0]}×{stats['grid'][1]}.", "",
             "| setting | from original (mean ± sd) | soft, 0 < M < 1 (mean ± sd) |",
             "|---|---|---|"]
    for k, v in stats.items():
        if isinstance(v, dict):
            lines.append(f"| {k} | {100 * v['original_share_mean']:.1f} ± "
                         f"{100 * v['original_share_std']:.1f} % | "
                         f"{100 * v['soft_share_mean']:.1f} ± {100 * v['soft_share_std']:.1f} % |")
    return {"clip": label, "row": row, "num_images": int(len(idx)), "stats": stats,
            "report_lines": lines}
