"""DiffuseMix generation (Islam et al., CVPR 2024) and its seed 000 variants, end to end.

``augdiff generate`` with ``method='diffusemix'`` runs two phases into ``store_dir``:

1. **Edits** (``<store_dir>/edits``, source id 1). Every real training image ``I_i`` (of the
   ``data`` subset) is edited with every prompt ``p_j`` of the bank by InstructPix2Pix
   (Brooks et al. 2023)::

       Î_ij = IP2P(I_i, p_j)   with dual guidance  ε̃ = ε(∅,∅) + s_I (ε(c_I,∅) − ε(∅,∅))
                                                        + s_T (ε(c_I,c_T) − ε(c_I,∅))

   DiffuseMix's setting: the nine prompts of :data:`DIFFUSEMIX_PROMPTS` (or any subset, e.g.
   seed 000's single prompt), text guidance ``s_T = 4``, image guidance ``s_I = 1.5`` (the
   diffusers default DiffuseMix keeps), Euler-ancestral sampling, inputs resized to 256².
   Edits are resized back to ``data.image_size``. Black outputs (every pixel at or below
   ``black_threshold``; what a safety checker returns) and non-finite outputs are dropped and
   counted in the manifest (``writer.note``: ``filtered_black``, ``filtered_nonfinite``).

2. **Hybrids** (``<store_dir>/hybrids``, source id 2), for the offline variants: every edit and
   its parent become ``H = M ⊙ I + (1 − M) ⊙ Î`` (concatenation or random half masks of
   :mod:`augdiff.methods.hybrids`, or CLIP-guided semantic blending of
   :mod:`augdiff.methods.semantic`), then optionally ``C = (1 − λ) H + λ F`` with a fractal
   ``F`` from a bank and the label weight ``1 − λ`` (label scaling) in the record's ``weight``.
   With ``hybrid.policy='online'`` no hybrid is written: :class:`OnlinePairs` builds them on
   device inside the classifier's input pipeline, from the same keys.

Randomness: ``edit_key, hybrid_key, fractal_key = split(PRNGKey(seed), 3)``. Edit number
``e = i · P + j`` (real row ``i``, prompt ``j`` of ``P``) draws everything from
``fold_in(edit_key, e)`` (initial latent noise and the ancestral sampler's noise, see
:mod:`augdiff.sd.pipelines`), and its hybrid uses pair id ``e`` under ``hybrid_key``
(:func:`augdiff.methods.hybrids.pair_keys`). So an example's bytes do not depend on the batch
it was made in, a resumed run skips the keys already stored and reproduces the rest exactly,
and online hybrids with ``policy='offline'`` equal the written ones bit for bit.

Provenance per edit: parent (real row) and its file name, prompt and its index, seed,
example number, guidances, steps, sampler, resolution and the model (``tiny-random`` for test
models); hybrids add the pair id, the variant, ``λ`` and ``weight`` (and the CLIP model for SHB).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from augdiff import distributed
from augdiff.data.store import example_keys
from augdiff.methods import hybrids, semantic

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
FILTER_REASONS = ("black", "nonfinite")
_SPEC_FIELDS = {f.name for f in dataclasses.fields(hybrids.DiffuseMixSpec)}


# --------------------------------------------------------------------------------------------
# Prompts, plan, keys
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# InstructPix2Pix edits and the output filter
# --------------------------------------------------------------------------------------------


def resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 NHWC → ``size``² (PIL bicubic, antialiased when shrinking); 1 channel → RGB."""
    from PIL import Image

    x = np.asarray(images)
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(f"expected uint8 NHWC images, got {x.dtype} {x.shape}")
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    if x.shape[1:3] == (size, size):
        return x
    return np.stack([np.asarray(Image.fromarray(a).resize((size, size), Image.BICUBIC)) for a in x])


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
    from augdiff.sd import pipelines

    x = resize_uint8(images, int(resolution)).astype(np.float32) / 127.5 - 1.0
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


def to_store_uint8(images01: np.ndarray, size: int) -> np.ndarray:
    """Finite [0, 1] float images → uint8 at ``size``² (round to nearest, PIL bicubic)."""
    u8 = np.asarray(np.round(np.clip(images01, 0.0, 1.0) * 255.0), np.uint8)
    return resize_uint8(u8, size)


class _FilterLog:
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
            with open(self.path) as f:
                self.keys = dict(json.load(f))
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
        tmp = f"{self.path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(self.keys, f, sort_keys=True)
        os.replace(tmp, self.path)


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def load_ip2p(cfg: Any, workdir: str, seed: int) -> tuple[Any, dict]:
    """``(components, params)`` of the InstructPix2Pix model ``cfg.model``; with an empty path
    and ``cfg.tiny`` a tiny random-weight one is made in ``<workdir>/tiny_ip2p`` (process 0)."""
    from augdiff.sd import loading

    path = cfg.get("model", "")
    if not path:
        if not cfg.get("tiny", False):
            raise ValueError(
                "config.diffusemix.model is empty: give an InstructPix2Pix folder / hub id "
                "(e.g. timbrooks/instruct-pix2pix) or set diffusemix.tiny=True"
            )
        from augdiff.sd import tiny

        path = os.path.join(workdir, "tiny_ip2p")
        if not os.path.isfile(os.path.join(path, "model_index.json")):
            if jax.process_index() == 0:
                tiny.make_tiny_sd(path, kind="ip2p", seed=int(seed), formats=("flax",))
            _sync(f"augdiff tiny ip2p {path}")
    return loading.load_sd(path, dtype=cfg.get("dtype", "float32"), kind="ip2p")


def make_tiny_clip(path: str | os.PathLike, seed: int = 0) -> str:
    """A tiny random-weight ``FlaxCLIPModel`` (the tiny SD text/vision configs: 32-d, 4×4 patch
    grid at 32²) with a local byte-level tokenizer, saved with ``save_pretrained``."""
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig, FlaxCLIPModel

    from augdiff.sd import loading, tiny

    root = os.fspath(path)
    vocab = tiny.write_tokenizer(root)
    cfg = CLIPConfig.from_text_vision_configs(
        CLIPTextConfig(**tiny.text_config(vocab)),
        CLIPVisionConfig(**tiny.vision_config()),
        projection_dim=tiny.IMAGE_EMBED_DIM,
    )
    model = FlaxCLIPModel(cfg, _do_init=False)
    params = tiny.random_params(loading.text_encoder_abstract(model), np.random.default_rng(seed))
    model.save_pretrained(root, params=params)
    with open(os.path.join(root, loading.TINY_MARKER), "w") as f:
        f.write(f"augdiff tiny CLIP with RANDOM weights (seed {seed}); not a trained model.\n")
    return root


def load_clip(shb: Any, workdir: str, seed: int) -> tuple[Any, dict, Any, str]:
    """``(clip_model, params, tokenizer, label)`` for SHB: a transformers ``FlaxCLIPModel`` from
    ``shb.clip`` (folder / cached hub id, e.g. openai/clip-vit-base-patch32), or with
    ``shb.tiny`` a tiny random one in ``<workdir>/tiny_clip``. ``label`` is what provenance
    records (``tiny-random`` for the test model)."""
    from transformers import CLIPTokenizer, FlaxCLIPModel

    path = shb.get("clip", "")
    label = path
    if not path:
        if not shb.get("tiny", False):
            raise ValueError(
                "SHB needs CLIP: set diffusemix.shb.clip (FlaxCLIPModel folder / hub id) or "
                "diffusemix.shb.tiny=True"
            )
        path, label = os.path.join(workdir, "tiny_clip"), "tiny-random"
        if not os.path.isfile(os.path.join(path, "config.json")):
            if jax.process_index() == 0:
                make_tiny_clip(path, seed)
            _sync(f"augdiff tiny clip {path}")
    model, params = FlaxCLIPModel.from_pretrained(path, _do_init=False)
    return model, params, CLIPTokenizer.from_pretrained(path), label


def class_text_embeddings(
    clip_model: Any, params: dict, tokenizer: Any, class_names: Sequence[str], template: str
) -> jax.Array:
    """Projected CLIP text embeddings [C, D] of ``template.format(name)`` per class."""
    prompts = [template.format(n.replace("_", " ")) for n in class_names]
    tok = tokenizer(prompts, padding="max_length", truncation=True, return_tensors="np",
                    max_length=tokenizer.model_max_length)
    return semantic.clip_text_embeddings(
        clip_model, tok.input_ids.astype(np.int32), tok.attention_mask.astype(np.int32), params
    )


# --------------------------------------------------------------------------------------------
# Hybrid specs and the semantic (SHB) variant
# --------------------------------------------------------------------------------------------


def hybrid_spec(cfg: Any) -> tuple[hybrids.DiffuseMixSpec, bool]:
    """``(spec, semantic)`` from ``config.diffusemix.hybrid``.

    ``mask`` is ``concat`` / ``random`` (:class:`~augdiff.methods.hybrids.DiffuseMixSpec`) or
    ``semantic`` (SHB, seed 000 §3.3; the spec then only carries the fractal / λ / label
    scaling fields). ``lam_min``/``lam_max`` < 0 (the default) means the fixed ``lam``;
    otherwise ``λ ~ U[lam_min, lam_max]``.
    """
    d = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
    lo, hi = d.pop("lam_min", -1.0), d.pop("lam_max", -1.0)
    if lo is not None and hi is not None and (lo >= 0 or hi >= 0):
        d["lam_min"], d["lam_max"] = lo, hi
    is_semantic = d.get("mask") == "semantic"
    if is_semantic:
        d["mask"] = "concat"
        if d.get("policy", "offline") != "offline":
            raise ValueError(
                "hybrid.mask='semantic' has no randomness (its mask is the same offline and "
                "online): use hybrid.policy='offline'"
            )
    return hybrids.spec_from_config(d), is_semantic


@functools.partial(jax.jit, static_argnames=("spec",))
def fractal_finish(
    key: jax.Array, x: jax.Array, pair_ids: jax.Array, fractals: jax.Array | None = None, *,
    spec: hybrids.DiffuseMixSpec,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """DiffuseMix's fractal step on finished hybrids ``x`` [B, h, w, C] (the SHB rows):
    ``C = (1 − λ) x + λ F`` with λ and F from the pair key (offline policy) when
    ``spec.fractal``. Returns ``(images, weights, lam)`` ([B] each; ``lam`` = 0 without)."""
    b, h, w, _ = x.shape
    if not spec.fractal:
        return x, jnp.ones((b,), jnp.float32), jnp.zeros((b,), jnp.float32)
    if fractals is None:
        raise ValueError("spec.fractal is on: pass a fractal bank [K, h, w, C] as `fractals`")
    keys = hybrids.pair_keys(key, pair_ids, policy="offline")
    lam = hybrids.draw_lambda(keys, spec.lam)
    x = hybrids.fractal_blend(x, hybrids.pick_fractals(keys, fractals, h, w).astype(x.dtype), lam)
    return x, hybrids.label_weights(lam, spec.label_scaling), lam


def shb_settings(shb: Any) -> dict[str, Any]:
    """The mask settings of ``config.diffusemix.shb`` for :func:`semantic.semantic_hybrid`."""
    smoothing = str(shb.get("smoothing", "paper"))
    semantic.smoothing_geometry(smoothing, int(shb.kernel_size))  # validates
    return dict(percentile=float(shb.get("percentile", 50.0)),
                kernel_size=int(shb.kernel_size), smoothing=smoothing,
                binary=bool(shb.get("binary", False)))


def write_semantic_hybrids(
    writer: Any,
    original: np.ndarray,
    generated: np.ndarray,
    labels: np.ndarray,
    pair_ids: np.ndarray,
    *,
    key: jax.Array,
    spec: hybrids.DiffuseMixSpec,
    similarity_fn: Callable[[jax.Array, jax.Array], jax.Array],
    clip_label: str,
    size: int,
    fractals: jax.Array | None = None,
    settings: Mapping[str, Any] | None = None,
    batch_size: int = 64,
    source: int = HYBRID_SOURCE,
    provenance: Sequence[Mapping[str, Any]] | None = None,
) -> int:
    """Offline SHB hybrids through a ``StoreWriter`` (keys ``hybrid-<pair_id>``, stored keys
    skipped), at the EDIT's resolution: ``generated`` uint8 [N, R, R, C] are the edits at the
    resolution they were made at and ``original`` the real images (resized to R² bicubically,
    as the editor's input was); SHB blends at R² (``similarity_fn(generated in [-1, 1],
    labels) -> [B, g, g]``, :func:`semantic.semantic_hybrid`), the blend is resized to
    ``size``² (:func:`to_store_uint8`) and DiffuseMix's fractal step follows at ``size``²
    (:func:`fractal_finish`). Returns the number added."""
    settings = dict(settings or {})
    n = len(original)
    res = int(generated.shape[1])
    pair_ids = np.asarray(pair_ids, np.int64)
    todo = [i for i in range(n) if f"hybrid-{pair_ids[i]}" not in writer.completed_keys]
    variant = {"mask": "semantic", "resolution": res, **settings, "fractal": spec.fractal,
               "lam": spec.lam, "label_scaling": spec.label_scaling, "clip": clip_label}
    added = 0
    for start in range(0, len(todo), batch_size):
        rows = np.asarray(todo[start : start + batch_size])
        m = len(rows)
        o = hybrids.to_float(resize_uint8(original[rows], res))
        g = hybrids.to_float(generated[rows])
        lab = jnp.asarray(np.asarray(labels)[rows].astype(np.int32))
        x, _ = semantic.semantic_hybrid(o, g, similarity_fn(g, lab), **settings)
        h = to_store_uint8((np.asarray(x) + 1.0) / 2.0, int(size))
        (h_p, ids_p), _ = distributed.pad_to_multiple(
            (h, pair_ids[rows].astype(np.int32)), batch_size)
        y, w, lam = fractal_finish(key, hybrids.to_float(h_p), jnp.asarray(ids_p), fractals,
                                   spec=spec)
        images = hybrids.to_uint8(distributed.unpad(y, m))
        weights, lams = np.asarray(w)[:m], np.asarray(lam)[:m]
        for j, i in enumerate(rows):
            prov = dict(provenance[i]) if provenance is not None else {}
            prov.update(pair_id=int(pair_ids[i]), hybrid=variant, weight=float(weights[j]))
            if spec.fractal:
                prov["lam"] = float(lams[j])
            added += writer.add(f"hybrid-{pair_ids[i]}", images[j], int(labels[i]), source, prov)
    return added


def shb_similarity_fn(
    shb: Any, clip_model: Any, clip_params: Any, text_emb: jax.Array, resolution: int
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``fn(generated [B, R, R, C] in [-1, 1], labels [B]) -> S`` for ``shb.features``:
    ``crops`` (the seed 000 code: CLIP image embeddings of ``shb.crop``-px crops at stride
    ``shb.stride`` at 256², scaled to the edit resolution R) or ``tokens`` (CLIP patch
    tokens)."""
    features = str(shb.get("features", "crops"))
    if features == "crops":
        crop, stride = semantic.scaled_crop_geometry(
            resolution, int(shb.get("crop", semantic.CROP_256)),
            int(shb.get("stride", semantic.STRIDE_256)))
        embed = semantic.clip_image_embedding_fn(clip_model, clip_params)
        return lambda g, lab: semantic.crop_similarity_map(embed, g, text_emb, lab, crop=crop,
                                                           stride=stride)
    if features == "tokens":
        feats = semantic.clip_patch_feature_fn(clip_model, clip_params)
        return lambda g, lab: semantic.token_similarity_map(feats, g, text_emb, lab)
    raise ValueError(f"diffusemix.shb.features must be 'crops' or 'tokens', got {features!r}")


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


# --------------------------------------------------------------------------------------------
# Online hybrids inside the classifier's input pipeline
# --------------------------------------------------------------------------------------------


def pair_table(
    synthetic: Any, real: Any, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """``(parents, pair_ids)`` of every row of an edits store: the real row each edit was made
    from and its edit number. Checks that each parent's file name matches the real source, so
    a store made from different real data (another subset) fails loudly."""
    from tqdm.auto import tqdm

    n = len(synthetic)
    parents = np.empty(n, np.int64)
    pair_ids = np.empty(n, np.int64)
    for r in tqdm(range(n), desc="pair table", disable=not progress):
        prov = synthetic.provenance(r)
        if "parent" not in prov or "example" not in prov:
            raise ValueError(
                f"synthetic row {r} ({prov.get('key')}) has no parent/example in its provenance: "
                "online hybrids need a DiffuseMix edits store"
            )
        p = int(prov["parent"])
        if not 0 <= p < len(real):
            raise ValueError(f"synthetic row {r}: parent {p} outside the {len(real)} real rows")
        name = prov.get("parent_name")
        if name is not None and hasattr(real, "name_of") and not _same_file(real.name_of(p), name):
            raise ValueError(
                f"synthetic row {r}: parent {p} is {real.name_of(p)!r} in the real data but "
                f"{name!r} in the store; train on the data config the store was generated from"
            )
        parents[r], pair_ids[r] = p, int(prov["example"])
    return parents, pair_ids


def _same_file(a: str, b: str) -> bool:
    """Same ``<class>/<file>`` tail (the data root may have moved since generation)."""
    return a.replace("\\", "/").split("/")[-2:] == b.replace("\\", "/").split("/")[-2:]


class OnlinePairs:
    """Online DiffuseMix hybrids (seed 000 §4.6): masks (and λ, fractals) drawn on device every
    time a pair is seen.

    ``host(batch)`` adds, for each synthetic row of a loader batch, its parent real image
    (``original``, uint8) and pair id (``pair_id``; ``-1`` and the row's own image for real
    rows). ``device(batch, epoch)`` is pure and jittable: with ``image`` already in [-1, 1], it
    replaces the synthetic rows by ``hybrids.diffusemix(hybrid_key, I, Î, pair_ids, F,
    epoch=epoch)`` and their ``weight`` by ``weight · (1 − λ)`` under label scaling; real rows
    pass unchanged.
    """

    extra_keys = ("original", "pair_id")

    def __init__(
        self,
        real: Any,
        synthetic: Any,
        *,
        spec: hybrids.DiffuseMixSpec,
        key: jax.Array,
        fractals: jax.Array | None,
        parents: np.ndarray | None = None,
        pair_ids: np.ndarray | None = None,
    ):
        if spec.fractal and fractals is None:
            raise ValueError("online hybrids with fractal blending need a fractal bank")
        if parents is None or pair_ids is None:
            parents, pair_ids = pair_table(synthetic, real)
        self.real, self.spec, self.key, self.fractals = real, spec, key, fractals
        self.parents, self.pair_ids = np.asarray(parents), np.asarray(pair_ids)

    def host(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(batch)
        syn = np.asarray(batch["source"]) > 0
        rows = np.asarray(batch["index"])
        original = np.array(batch["image"], copy=True)
        pair = np.full(len(rows), -1, np.int32)
        for b in np.flatnonzero(syn):
            original[b] = self.real[int(self.parents[rows[b]])]["image"]
            pair[b] = self.pair_ids[rows[b]]
        out["original"], out["pair_id"] = original, pair
        return out

    def device(self, batch: Mapping[str, jax.Array], epoch: jax.Array | int) -> dict[str, Any]:
        x = batch["image"]
        original = batch["original"].astype(jnp.float32) / 127.5 - 1.0
        mixed, w = hybrids.diffusemix(
            self.key, original.astype(x.dtype), x, batch["pair_id"], self.fractals,
            spec=self.spec, epoch=epoch,
        )
        syn = batch["source"] > 0
        out = dict(batch)
        out["image"] = jnp.where(syn[:, None, None, None], mixed, x)
        out["weight"] = jnp.where(syn, batch["weight"] * w, batch["weight"])
        return out


def fractal_bank_from_config(dm: Any, fractal_key: jax.Array, size: int) -> jax.Array:
    """The fractal bank of ``config.diffusemix`` in [-1, 1]: the image folder
    ``fractal_path`` when set (as DiffuseMix loads its fractal set), else
    ``fractal_bank_size`` procedural IFS fractals from ``fractal_key`` (not FractalDB)."""
    path = str(dm.get("fractal_path", "") or "")
    if path:
        return hybrids.load_fractal_folder(path, size)
    return hybrids.fractal_bank(fractal_key, int(dm.fractal_bank_size), size)


def make_online(config: Any, real: Any, synthetic: Any) -> OnlinePairs | None:
    """The online transform ``config.online`` asks for, or None (``online.kind = 'none'``).

    ``kind='diffusemix'`` builds :class:`OnlinePairs` from ``config.diffusemix.hybrid`` (policy
    ``online`` redraws per epoch; ``offline`` reproduces the stored hybrids), the run's hybrid
    and fractal keys (:func:`run_keys` of ``config.diffusemix.seed`` or ``config.seed``) and a
    fractal bank of ``diffusemix.fractal_bank_size`` images at ``data.image_size``.
    """
    online = config.get("online", None)
    kind = online.get("kind", "none") if online is not None else "none"
    if kind in ("none", "", None):
        return None
    if kind != "diffusemix":
        raise ValueError(f"online.kind must be 'none' or 'diffusemix', got {kind!r}")
    if synthetic is None:
        raise ValueError("online.kind='diffusemix' needs synthetic.path (a DiffuseMix edits store)")
    dm = config.diffusemix
    spec, is_semantic = hybrid_spec(dm.hybrid)
    if is_semantic:
        raise ValueError("online hybrids support mask concat/random; SHB is written offline")
    _, hybrid_key, fractal_key = run_keys(_generation_seed(config))
    bank = fractal_bank_from_config(dm, fractal_key, int(config.data.image_size)) \
        if spec.fractal else None
    return OnlinePairs(real, synthetic, spec=spec, key=hybrid_key, fractals=bank)


def _generation_seed(config: Any) -> int:
    seed = config.diffusemix.get("seed", -1)
    return int(config.seed) if seed is None or int(seed) < 0 else int(seed)


# --------------------------------------------------------------------------------------------
# augdiff generate
# --------------------------------------------------------------------------------------------


def store_dirs(config: Any) -> tuple[str, str]:
    """``(edits_dir, hybrids_dir)`` under ``config.store_dir`` (default ``<workdir>/store``)."""
    root = config.get("store_dir", "") or os.path.join(config.workdir, "store")
    return os.path.join(root, "edits"), os.path.join(root, "hybrids")


def needs_edits(config: Any) -> bool:
    """Whether the variant uses generated images: every mask but ``original`` (Table 1's
    Fractal rows, ``C = (1 − λ) I + λ F``), which runs no edit stage."""
    return str(config.diffusemix.hybrid.get("mask", "concat")) != "original"


def writes_hybrids(config: Any) -> bool:
    """Whether generation writes offline hybrids (``diffusemix.write_hybrids`` and an offline
    policy); otherwise classifiers train on the edits (raw, or online hybrids)."""
    dm = config.diffusemix
    return bool(dm.get("write_hybrids", True)) and dm.hybrid.get("policy", "offline") == "offline"


def _generate_edits(
    config: Any, real: Any, prompts: tuple[str, ...], edits_dir: str, edit_key: jax.Array,
    progress: bool,
) -> dict[str, Any]:

    from augdiff.data.store import StoreWriter, pending_batches
    from augdiff.sd import loading, pipelines

    dm = config.diffusemix
    seed = _generation_seed(config)
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
        writer = stack.enter_context(StoreWriter(edits_dir, method="diffusemix",
                                                 config=manifest, shard_size=shard_size))
        # The same edits at the resolution they were made at (SHB blends there); written
        # first, committed at the same shard boundaries as the edits store.
        full_writer = stack.enter_context(StoreWriter(
            full_edits_dir(edits_dir), method="diffusemix", config=dict(manifest,
                                                                         image_size=res),
            shard_size=shard_size)) if keep_full else None
        filtered = _FilterLog(edits_dir, writer.process_index)
        for batch in pending_batches(writer, mine, bs, desc="diffusemix edits", skip=filtered):
            parents = np.stack([real[it["parent"]]["image"] for it in batch])
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
                    full_writer.add(it["key"], to_store_uint8(img[None], res)[0], label,
                                    EDIT_SOURCE, prov)
                written += writer.add(it["key"], to_store_uint8(img[None], size)[0], label,
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


EDITORS = ("ip2p", "edm")


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


def _generate_edits_edm(
    config: Any, real: Any, strengths: tuple[str, ...], edits_dir: str, edit_key: jax.Array,
    progress: bool,
) -> dict[str, Any]:
    """Edits with an EDM model augdiff trained (``diffusemix.editor = 'edm'``): SDEdit with
    Heun from ``σ_start`` under the class label (:mod:`augdiff.edm.edit`), written in the
    InstructPix2Pix edits' store format; the ``prompt`` field records strength and label."""
    from augdiff.data.store import StoreWriter, pending_batches
    from augdiff.edm import edit as edm_edit

    dm = config.diffusemix
    seed = _generation_seed(config)
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
        filtered = _FilterLog(edits_dir, writer.process_index)
        for batch in pending_batches(writer, mine, bs, desc="edm edits", skip=filtered):
            parents = np.stack([real[it["parent"]]["image"] for it in batch])
            labels = np.asarray([int(real.labels[it["parent"]]) for it in batch], np.int32)
            j = np.asarray([it["prompt_index"] for it in batch])
            keys = example_keys(edit_key, [it["example"] for it in batch])
            (parents_p, labels_p, j_p, keys_p), m = distributed.pad_to_multiple(
                (parents, labels, j, keys), bs)
            out = np.zeros((len(parents_p), loaded["size"], loaded["size"],
                            loaded["channels"]), np.float32)
            for k, fn in enumerate(fns):
                if np.any(j_p == k):
                    y = np.asarray(fn(loaded["params"], keys_p, edm_edit.to_unit(parents_p),
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
                written += writer.add(it["key"], to_store_uint8(img[None], size)[0], int(lab),
                                      EDIT_SOURCE, prov)
            if writer.num_written != before:
                filtered.commit()
        writer.flush()
        filtered.commit()
    return dict(planned=len(plan), this_process=len(mine), written=written,
                filtered_black=counts["black"], filtered_nonfinite=counts["nonfinite"],
                model=model)


def _generate_hybrids(
    config: Any, real: Any, edits_dir: str, hybrids_dir: str, hybrid_key: jax.Array,
    fractal_key: jax.Array, progress: bool, num_prompts: int = 1,
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from augdiff.data.store import StoreWriter, SyntheticStore

    dm = config.diffusemix
    spec, is_semantic = hybrid_spec(dm.hybrid)
    if edits_dir:
        edits = SyntheticStore(edits_dir)
        n_items = len(edits)
    else:  # mask 'original': one hybrid per planned edit, made from the real image alone
        edits = None
        n_real = len(real) if not int(dm.max_images) else min(len(real), int(dm.max_images))
        plan = plan_edits(n_real, num_prompts)
        n_items = len(plan)
    rows = np.arange(n_items)[distributed.process_slice(n_items)]
    size = int(config.data.image_size)
    bank = fractal_bank_from_config(dm, fractal_key, size) if spec.fractal else None
    variant = {f: getattr(spec, f) for f in _SPEC_FIELDS}
    manifest = dict(edits=os.path.abspath(edits_dir) if edits_dir else "", hybrid=variant,
                    mask="semantic" if is_semantic else spec.mask,
                    num_classes=real.num_classes, class_names=list(real.class_names),
                    seed=_generation_seed(config))
    clip = None
    full = None
    if is_semantic:
        shb = dm.shb
        res = int(edits.manifest.get("config", {}).get("resolution", size) or size)
        if res > size:  # SHB blends at the edit's resolution: read the full-resolution edits
            full_dir = full_edits_dir(edits_dir)
            try:
                full = SyntheticStore(full_dir)
            except Exception as e:
                raise ValueError(
                    f"SHB blends at the edit's resolution ({res}²) but {full_dir} holds no "
                    "full-resolution edits: regenerate the edits with "
                    "diffusemix.keep_full_edits=True") from e
            full_rows = {k: i for i, k in enumerate(full.keys)}
        else:
            res = size
        clip_model, clip_params, tok, clip_label = load_clip(shb, config.workdir,
                                                             _generation_seed(config))
        text_emb = class_text_embeddings(clip_model, clip_params, tok, real.class_names,
                                         str(shb.template))
        settings = shb_settings(shb)
        clip = dict(similarity_fn=shb_similarity_fn(shb, clip_model, clip_params, text_emb, res),
                    clip_label=clip_label, settings=settings, size=size)
        manifest.update(clip=clip_label, shb=dict(settings, resolution=res,
                                                  features=str(shb.get("features", "crops"))))
    bs, chunk = int(dm.hybrid_batch_size), max(int(dm.hybrid_batch_size) * 8, 1)
    added = 0
    with StoreWriter(hybrids_dir, method="diffusemix-hybrid", config=manifest,
                     shard_size=int(dm.get("shard_size", 256))) as writer:
        for start in tqdm(range(0, len(rows), chunk), desc="diffusemix hybrids",
                          disable=not progress):
            part = rows[start : start + chunk]
            if edits is not None:
                provs = [edits.provenance(int(r)) for r in part]
            else:
                provs = [dict(plan[int(r)], parent_name=real.name_of(plan[int(r)]["parent"]),
                              key=None, seed=_generation_seed(config)) for r in part]
            keep = [k for k, p in enumerate(provs)
                    if f"hybrid-{int(p['example'])}" not in writer.completed_keys]
            if not keep:
                continue
            part, provs = part[keep], [provs[k] for k in keep]
            original = np.stack([real[int(p["parent"])]["image"] for p in provs])
            if edits is not None:
                recs = [edits[int(r)] for r in part]
                generated = np.stack([r["image"] for r in recs])
                labels = np.asarray([int(r["label"]) for r in recs])
            else:  # M = 1: the generated half is never used
                generated = original
                labels = np.asarray([int(real.labels[int(p["parent"])]) for p in provs])
            ids = np.asarray([int(p["example"]) for p in provs])
            prov = [dict(parent=int(p["parent"]), parent_name=p.get("parent_name"),
                         prompt=p.get("prompt"), edit_key=p["key"], seed=p.get("seed"))
                    for p in provs]
            if full is not None:
                missing = [p["key"] for p in provs if p["key"] not in full_rows]
                if missing:
                    raise ValueError(f"{full_edits_dir(edits_dir)}: no full-resolution edit "
                                     f"for {missing[:3]} (regenerate the edits)")
                generated = np.stack([full[full_rows[p["key"]]]["image"] for p in provs])
            if clip is not None:
                added += write_semantic_hybrids(
                    writer, original, generated, labels, ids, key=hybrid_key, spec=spec,
                    fractals=bank, batch_size=bs, provenance=prov, **clip,
                )
            else:
                added += hybrids.write_hybrids(
                    writer, original, generated, labels, ids, key=hybrid_key, spec=spec,
                    fractals=bank, batch_size=bs, source=HYBRID_SOURCE, provenance=prov,
                    progress=False,
                )
    return dict(written=added, mask=manifest["mask"], **({"clip": clip["clip_label"]}
                                                          if clip else {}))


def generate(config: Any) -> dict[str, Any]:
    """``augdiff generate`` with ``method='diffusemix'``: edits, then (offline variants) hybrids.

    Returns a summary; ``store`` is the store classifiers train on (the hybrids for offline
    variants, else the edits), which the configs also set as ``synthetic.path``.
    """
    from augdiff.data.sources import open_real_source

    dm = config.diffusemix
    editor = str(dm.get("editor", "ip2p"))
    if editor not in EDITORS:
        raise ValueError(f"diffusemix.editor must be one of {EDITORS}, got {editor!r}")
    prompts = resolve_prompts(dm.prompts) if editor == "ip2p" else edm_strengths(dm)
    seed = _generation_seed(config)
    edit_key, hybrid_key, fractal_key = run_keys(seed)
    real = open_real_source(config.data, config.data.get("train_split", "train"))
    edits_dir, hybrids_dir = store_dirs(config)
    progress = jax.process_index() == 0 and bool(config.get("progress", True))
    adopted = str(dm.get("edits_store", "") or "")
    summary: dict[str, Any] = {"prompts": list(prompts)}
    if not needs_edits(config):
        # Fractal rows (mask 'original'): C = (1 − λ) I + λ F has no generated content, so no
        # edit is made; the hybrids are planned from the real images alone.
        edits_dir = ""
        summary["edits_summary"] = {"skipped": "mask 'original' uses no edits"}
    elif adopted:
        from augdiff.data.store import SyntheticStore

        SyntheticStore(adopted)  # a one-line StoreError when it is not a complete store
        edits_dir = adopted
        summary["edits_summary"] = {"adopted": os.path.abspath(adopted)}
    else:
        summary["edits_summary"] = (_generate_edits if editor == "ip2p" else
                                    _generate_edits_edm)(config, real, prompts, edits_dir,
                                                         edit_key, progress)
        _sync(f"augdiff diffusemix edits {edits_dir}")
    summary.update(store=edits_dir, edits=edits_dir)
    if writes_hybrids(config):
        summary["hybrids"] = hybrids_dir
        summary["hybrids_summary"] = _generate_hybrids(
            config, real, edits_dir, hybrids_dir, hybrid_key, fractal_key, progress,
            num_prompts=len(prompts))
        summary["store"] = hybrids_dir
        _sync(f"augdiff diffusemix hybrids {hybrids_dir}")
    return summary


__all__ = [
    "DIFFUSEMIX_PROMPTS",
    "OnlinePairs",
    "class_text_embeddings",
    "edit_images",
    "example_keys",
    "generate",
    "hybrid_spec",
    "load_clip",
    "load_ip2p",
    "make_online",
    "make_tiny_clip",
    "output_status",
    "pair_table",
    "plan_edits",
    "resolve_prompts",
    "run_keys",
    "fractal_finish",
    "full_edits_dir",
    "keeps_full_edits",
    "shb_settings",
    "shb_similarity_fn",
    "store_dirs",
    "to_store_uint8",
    "write_semantic_hybrids",
    "writes_hybrids",
]
