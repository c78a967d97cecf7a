"""Augmented conditioning (Chen, Zhang & Romero-Soriano 2025, arXiv 2502.04475).

A frozen unCLIP generator (stable-diffusion-2-1-unclip style, :mod:`augdiff.sd.unclip`) is
conditioned on the class-name prompt *and* on the CLIP image embedding of a real training
image, made more diverse by classical augmentations applied before or after CLIP encoding
(§3 of the paper). With ``x₁`` the parent image, ``x₂`` a partner image of the **same class**
and ``E`` the CLIP image encoder (projected, unnormalised, as unCLIP uses it):

Pixel space (mix, then encode):

- **CutMix** (Yun et al. 2019): ``λ ~ Beta(α, α)``; a box of side ratio ``√(1−λ)`` centred at
  a uniform pixel (clipped at the border) is pasted from ``x₂`` into ``x₁``:
  ``x̃ = M ⊙ x₁ + (1 − M) ⊙ x₂``, ``e = E(x̃)``. The realised ``λ' = 1 − |box| / (HW)`` is recorded.
- **Mixup** (Zhang et al. 2018): ``λ ~ Beta(α, α)``; ``x̃ = λ x₁ + (1 − λ) x₂``, ``e = E(x̃)``.

Embedding space (encode, then mix), with ``e₁ = E(x₁)``, ``e₂ = E(x₂) ∈ ℝ^D``:

- **Embed-CutMix**: ``λ ~ Beta(α, α)``; ``L = round((1 − λ) D)`` dims are taken from ``e₂``.
  *Choice* (``embed_cutmix_mode``; the paper's summary does not say which dims): ``block``
  (default) — a contiguous block starting at ``s ~ U{0, …, D − L}``: ``e_d = e₂_d`` for
  ``s ≤ d < s + L``, else ``e₁_d``, the 1-D analogue of the CutMix box; ``subset`` — the
  alternative, ``L`` dims chosen uniformly at random without replacement. Realised
  ``λ' = 1 − L / D``.
- **Embed-Mixup**: ``e = λ e₁ + (1 − λ) e₂``.

*Choice*: ``λ ~ Beta(α, α)`` with ``α = 1`` (uniform) by default, as Yun et al. and Zhang et al.
use; ``alpha`` is configurable.

**Dropout(p)** on the conditioning embedding (after any mix): ``m_d ~ Bernoulli(1 − p)``
i.i.d. *Choice* (``dropout_rescale``): ``ẽ = m ⊙ e / (1 − p)`` (default: inverted dropout,
``torch.nn.Dropout``'s convention, so ``E[ẽ] = e``) or the alternative plain masking
``ẽ = m ⊙ e`` (no rescale; the embedding's norm shrinks by ≈ √(1 − p)). ``p = 0`` is the
identity; ``p = 1`` drops every dimension, ``ẽ = 0``: the image contributes nothing and
generation follows the **text-only path** (:func:`text_only_images`, the unCLIP model with a
null image embedding). Augmentations combine, e.g. ``embed_cutmix+dropout``
(Embed-CutMix-Dropout, the paper's best).

*Choice*: the unCLIP image-embedding noise augmentation is off (``noise_level = 0``, the
embedding is used as encoded); ``augcond.noise_level`` sets it (diffusers'
``StableUnCLIPImg2ImgPipeline`` default is 0 as well).

Generation: classifier-free guidance against the empty prompt and a zero class input
(:func:`augdiff.sd.pipelines.unclip_variation`), scale 2.0 for large-scale and 10.0 for
few-shot generation, 30 sampling steps (all in ``configs/augcond_cifar10.py``).

Long tail: :func:`generation_counts` gives per class exactly what brings every class to the
head-class count (ImageNet-LT protocol) or a fixed multiple of the real count.

Randomness: example ``e`` of a run (a fixed numbering of everything it will produce) uses the
row key ``k = fold_in(PRNGKey(seed), e)`` for everything: partner choice ``fold_in(k, 19)``,
mix ``fold_in(k, 16)`` (λ) and ``fold_in(k, 17)`` (box / block position), dropout mask
``fold_in(k, 18)``, and the unCLIP pipeline's own sub-streams (0: latent noise, 3: embedding
noise). A resumed run therefore reproduces the same bytes whatever the batch composition.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from augdiff import distributed
from augdiff.data import augment
from augdiff.data.pixels import to_signed_rgb, unit_to_store
from augdiff.data.sources import open_real_source
from augdiff.data.store import StoreWriter, example_keys, pending_batches
from augdiff.sd import loading, pipelines, tiny
from augdiff.sd.generate import model_identity_of

Array = jax.Array

PIXEL_MIXES = ("pixel_cutmix", "pixel_mixup")
EMBED_MIXES = ("embed_cutmix", "embed_mixup")
MIXES = ("none", *PIXEL_MIXES, *EMBED_MIXES)
EMBED_CUTMIX_MODES = ("block", "subset")
COUNT_MODES = ("balance", "multiple", "per_class")

# Sub-streams of an example's row key (0-3 are the SD pipelines' own, see pipelines.py).
STREAM_LAMBDA, STREAM_POSITION, STREAM_DROPOUT, STREAM_PARTNER = 16, 17, 18, 19


# ------------------------------------------------------------------------ augmentations


def _check_alpha(alpha: float) -> None:
    if not alpha > 0:
        raise ValueError(f"augcond: Beta(alpha, alpha) needs alpha > 0, got {alpha}")


def cutmix_box(key: Array, height: int, width: int, alpha: float) -> dict[str, Array]:
    """The CutMix box of one pair (Yun et al. 2019, §3.1).

    ``λ ~ Beta(α, α)`` from the pair key's ``STREAM_LAMBDA`` sub-stream and a uniform centre
    from its ``STREAM_POSITION`` sub-stream; the box geometry is
    :func:`augdiff.data.augment.cutmix_box` (side ratio ``√(1 − λ)``, clipped). Returns the
    box ``y0, y1, x0, x1``, the sampled ``lam_sampled`` and the realised
    ``lam = 1 − |box| / (HW)`` (the share of ``x₁`` kept).
    """
    k_lam, k_pos = jax.random.fold_in(key, STREAM_LAMBDA), jax.random.fold_in(key, STREAM_POSITION)
    lam = jax.random.beta(k_lam, alpha, alpha)
    ky, kx = jax.random.split(k_pos)
    cy = jax.random.randint(ky, (), 0, height)
    cx = jax.random.randint(kx, (), 0, width)
    y0, y1, x0, x1 = augment.cutmix_box(lam, cy, cx, height, width)
    area = ((y1 - y0) * (x1 - x0)).astype(jnp.float32)
    return dict(y0=y0, y1=y1, x0=x0, x1=x1, lam_sampled=lam, lam=1.0 - area / (height * width))


def pixel_cutmix(key: Array, x1: Array, x2: Array, alpha: float) -> tuple[Array, dict[str, Array]]:
    """CutMix of one same-class pair of HWC images: ``x̃ = M ⊙ x₁ + (1 − M) ⊙ x₂``."""
    _check_alpha(alpha)
    h, w = x1.shape[0], x1.shape[1]
    box = cutmix_box(key, h, w, alpha)
    inside = augment.box_mask(h, w, box["y0"], box["y1"], box["x0"], box["x1"])
    return jnp.where(inside[..., None], x2, x1), box


def pixel_mixup(key: Array, x1: Array, x2: Array, alpha: float) -> tuple[Array, dict[str, Array]]:
    """Mixup of one pair (Zhang et al. 2018): ``λ ~ Beta(α, α)``, ``x̃ = λ x₁ + (1 − λ) x₂``."""
    _check_alpha(alpha)
    lam = jax.random.beta(jax.random.fold_in(key, STREAM_LAMBDA), alpha, alpha)
    return lam * x1 + (1.0 - lam) * x2, dict(lam=lam)


def embed_cutmix(
    key: Array, e1: Array, e2: Array, alpha: float, mode: str = "block"
) -> tuple[Array, dict[str, Array]]:
    """Embedding CutMix of one pair of ``[D]`` embeddings (paper §3, "Embed-CutMix").

    ``λ ~ Beta(α, α)``, ``L = round((1 − λ) D)``; ``mode='block'``: start ``s ~ U{0, …, D − L}``,
    dims ``[s, s + L)`` come from ``e₂``; ``mode='subset'``: ``L`` dims uniformly at random
    (without replacement). Returns the realised ``lam = 1 − L / D``, ``start`` (block only,
    -1 for subset) and ``length``.
    """
    _check_alpha(alpha)
    if mode not in EMBED_CUTMIX_MODES:
        raise ValueError(f"augcond: embed_cutmix_mode must be one of {EMBED_CUTMIX_MODES}")
    d = e1.shape[-1]
    lam = jax.random.beta(jax.random.fold_in(key, STREAM_LAMBDA), alpha, alpha)
    length = jnp.round((1.0 - lam) * d).astype(jnp.int32)
    k_pos = jax.random.fold_in(key, STREAM_POSITION)
    idx = jnp.arange(d)
    if mode == "subset":
        rank = jnp.argsort(jnp.argsort(jax.random.uniform(k_pos, (d,))))
        block = rank < length
        start = jnp.int32(-1)
    else:
        start = jax.random.randint(k_pos, (), 0, d - length + 1)
        block = (idx >= start) & (idx < start + length)
    info = dict(lam_sampled=lam, lam=1.0 - length / d, start=start, length=length)
    return jnp.where(block, e2, e1), info


def embed_mixup(key: Array, e1: Array, e2: Array, alpha: float) -> tuple[Array, dict[str, Array]]:
    """Embedding Mixup of one pair: ``e = λ e₁ + (1 − λ) e₂``, ``λ ~ Beta(α, α)``."""
    _check_alpha(alpha)
    lam = jax.random.beta(jax.random.fold_in(key, STREAM_LAMBDA), alpha, alpha)
    return lam * e1 + (1.0 - lam) * e2, dict(lam=lam)


def embed_dropout(
    key: Array, e: Array, p: float | Array, rescale: bool = True
) -> tuple[Array, Array]:
    """Dropout(p) of one embedding: ``ẽ = m ⊙ e / (1 − p)`` (``rescale``, inverted dropout) or
    ``ẽ = m ⊙ e`` (plain masking), ``m_d ~ Bernoulli(1 − p)``.

    ``p = 1`` gives ``ẽ = 0`` exactly (every dim dropped, no division). Returns ``ẽ`` and the
    fraction of dims dropped.
    """
    p = jnp.asarray(p, jnp.float32)
    u = jax.random.uniform(jax.random.fold_in(key, STREAM_DROPOUT), e.shape)
    keep = u >= p  # P(keep) = 1 - p; never when p = 1 since u < 1
    scale = 1.0 / jnp.maximum(1.0 - p, jnp.finfo(jnp.float32).tiny) if rescale else 1.0
    out = jnp.where(keep, e * scale, jnp.zeros_like(e))
    return out, 1.0 - jnp.mean(keep.astype(jnp.float32))


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """One augmentation recipe: at most one mix (pixel or embedding) then Dropout(``dropout``).

    Hashable, so it is a static argument of the jitted conditioning function.
    """

    mix: str = "none"
    alpha: float = 1.0
    dropout: float = 0.0
    dropout_rescale: bool = True  # inverted dropout (default) or plain masking
    embed_cutmix_mode: str = "block"  # contiguous block (default) or random subset

    def __post_init__(self) -> None:
        if self.mix not in MIXES:
            raise ValueError(f"augcond: mix must be one of {MIXES}, got {self.mix!r}")
        if self.embed_cutmix_mode not in EMBED_CUTMIX_MODES:
            raise ValueError(
                f"augcond: embed_cutmix_mode must be one of {EMBED_CUTMIX_MODES}, "
                f"got {self.embed_cutmix_mode!r}"
            )
        if self.mix != "none":
            _check_alpha(self.alpha)
        if not 0.0 <= self.dropout <= 1.0:
            raise ValueError(f"augcond: dropout p must be in [0, 1], got {self.dropout}")

    @classmethod
    def parse(
        cls,
        spec: str,
        *,
        alpha: float = 1.0,
        dropout_p: float = 0.4,
        dropout_rescale: bool = True,
        embed_cutmix_mode: str = "block",
    ) -> Augmentation:
        """``'embed_cutmix+dropout'``, ``'pixel_mixup'``, ``'dropout'``, ``'none'``, ...

        ``dropout`` in the spec switches on Dropout(``dropout_p``); ``none`` is no augmentation.
        """
        parts = [s.strip() for s in str(spec).replace("-", "_").lower().split("+") if s.strip()]
        mixes = [s for s in parts if s in MIXES and s != "none"]
        unknown = [s for s in parts if s not in MIXES and s != "dropout"]
        if unknown:
            raise ValueError(
                f"augcond: unknown augmentation {unknown} in {spec!r}; combine one of "
                f"{MIXES} with 'dropout' using '+'"
            )
        if len(mixes) > 1:
            raise ValueError(f"augcond: at most one mix per augmentation, got {mixes} in {spec!r}")
        return cls(
            mix=mixes[0] if mixes else "none",
            alpha=float(alpha),
            dropout=float(dropout_p) if "dropout" in parts else 0.0,
            dropout_rescale=bool(dropout_rescale),
            embed_cutmix_mode=str(embed_cutmix_mode),
        )

    @property
    def name(self) -> str:
        parts = [self.mix] if self.mix != "none" else []
        if self.dropout > 0:
            parts.append("dropout")
        return "+".join(parts) or "none"

    @property
    def needs_partner(self) -> bool:
        return self.mix != "none"


@functools.partial(jax.jit, static_argnames=("components", "aug"))
def _conditioning(
    components: loading.SDComponents,
    aug: Augmentation,
    params: dict,
    keys: Array,
    x1: Array,
    x2: Array,
) -> tuple[Array, dict[str, Array]]:
    info: dict[str, Array] = {}
    if aug.mix in PIXEL_MIXES:
        fn = pixel_cutmix if aug.mix == "pixel_cutmix" else pixel_mixup
        x, info = jax.vmap(lambda k, a, b: fn(k, a, b, aug.alpha))(keys, x1, x2)
        e = pipelines.clip_image_embeds(components, params, x)
    else:
        e = pipelines.clip_image_embeds(components, params, x1)
        if aug.mix in EMBED_MIXES:
            e2 = pipelines.clip_image_embeds(components, params, x2)
            return mix_embeddings(aug, keys, e, e2)
    return mix_embeddings(aug, keys, e, e, info)


def mix_embeddings(aug: Augmentation, keys: Array, e1: Array, e2: Array,
                   info: dict[str, Array] | None = None) -> tuple[Array, dict[str, Array]]:
    """The embedding side of ``aug`` on rows ``[N, D]``: Embed-CutMix / Embed-Mixup of
    ``e1`` with ``e2`` (when ``aug.mix`` is an embedding mix), then Dropout(``aug.dropout``),
    each row from its own key (streams :data:`STREAM_LAMBDA`, ... as the pixel path). Returns
    the embeddings and the per-row parameters drawn, merged into ``info``."""
    e, info = e1, dict(info or {})
    if aug.mix == "embed_cutmix":
        e, drawn = jax.vmap(lambda k, a, b: embed_cutmix(
            k, a, b, aug.alpha, aug.embed_cutmix_mode))(keys, e1, e2)
        info.update(drawn)
    elif aug.mix == "embed_mixup":
        e, drawn = jax.vmap(lambda k, a, b: embed_mixup(k, a, b, aug.alpha))(keys, e1, e2)
        info.update(drawn)
    if aug.dropout > 0:
        e, dropped = jax.vmap(lambda k, v: embed_dropout(k, v, aug.dropout, aug.dropout_rescale))(
            keys, e
        )
        info["dropped"] = dropped
    return e, info


def augmented_embeddings(
    components: loading.SDComponents,
    params: dict,
    aug: Augmentation,
    keys: Array,
    images: Array,
    partners: Array | None = None,
    *,
    mesh: Mesh | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Augmented CLIP image embeddings ``[N, D]`` of parents ``images`` (NHWC in [-1, 1]).

    ``partners`` (same shape, same class) are needed by every mix; ``keys`` holds one row key
    per example. The whole computation (pixel mix, CLIP encoder, embedding mix, dropout) is one
    jit; with ``mesh`` the batch is padded to and split over its devices. Returns the
    embeddings and the per-row parameters drawn (``lam``, box / block, ``dropped``), as numpy.
    """
    x1 = jnp.asarray(images, jnp.float32)
    if x1.ndim != 4 or x1.shape[-1] != 3:
        raise ValueError(f"augcond: images must be NHWC with 3 channels, got {x1.shape}")
    if aug.needs_partner and partners is None:
        raise ValueError(f"augcond: augmentation {aug.name!r} needs partner images")
    x2 = x1 if partners is None else jnp.asarray(partners, jnp.float32)
    if x2.shape != x1.shape:
        raise ValueError(f"augcond: partners {x2.shape} must match images {x1.shape}")
    keys = pipelines.row_keys(keys, x1.shape[0])
    batch = dict(keys=keys, x1=x1, x2=x2)
    n = x1.shape[0]
    if mesh is not None:
        batch, n = distributed.pad_to_multiple(batch, distributed.num_batch_shards(mesh))
        batch = distributed.shard_batch(batch, mesh)
        params = pipelines.place_params(params, mesh)
    e, info = _conditioning(components, aug, params, batch["keys"], batch["x1"], batch["x2"])
    return np.asarray(e)[:n], {k: np.asarray(v)[:n] for k, v in info.items()}


def text_only_embeddings(components: loading.SDComponents, n: int) -> np.ndarray:
    """The null image embedding ``0 ∈ ℝ^{N×D}``: the text-only conditioning of unCLIP."""
    return np.zeros((n, components.image_embed_dim), np.float32)


def generate_images(
    components: loading.SDComponents,
    params: dict,
    image_embeds: Array,
    prompt_embeds: Array,
    keys: Array,
    *,
    guidance_scale: float = 2.0,
    num_steps: int = 30,
    sampler: str = "ddim",
    noise_level: int = 0,
    height: int | None = None,
    width: int | None = None,
    mesh: Mesh | None = None,
) -> np.ndarray:
    """unCLIP generation from (augmented) image embeddings and encoded class prompts.

    CFG ε̃ = ε(∅, 0) + w (ε(c_T, e) − ε(∅, 0)) against the empty prompt and a zero class input
    (:func:`augdiff.sd.pipelines.unclip_variation`). Returns NHWC images in [0, 1].
    """
    return pipelines.unclip_variation(
        components,
        params,
        image_embeds,
        keys,
        prompts=prompt_embeds,
        noise_level=int(noise_level),
        guidance_scale=float(guidance_scale),
        num_steps=int(num_steps),
        sampler=sampler,
        height=height,
        width=width,
        mesh=mesh,
    )


def text_only_images(
    components: loading.SDComponents,
    params: dict,
    prompt_embeds: Array,
    keys: Array,
    **kwargs: Any,
) -> np.ndarray:
    """The text-only path: the same generator with the null image embedding (no image at all)."""
    n = int(jnp.asarray(prompt_embeds).shape[0])
    return generate_images(
        components, params, text_only_embeddings(components, n), prompt_embeds, keys, **kwargs
    )


# --------------------------------------------------------------------------- planning


def generation_counts(
    class_counts: Any,
    mode: str,
    *,
    multiple: int = 1,
    per_class: int = 0,
    target: int = 0,
) -> np.ndarray:
    """How many images to generate per class.

    - ``balance``: ``g_c = max(T − n_c, 0)`` with ``T = target`` or the head-class count
      ``max_c n_c`` (ImageNet-LT protocol: every class ends with ``T`` real + synthetic images);
    - ``multiple``: ``g_c = multiple · n_c``;
    - ``per_class``: ``g_c = per_class``.
    """
    n = np.asarray(class_counts, np.int64)
    if n.ndim != 1 or len(n) == 0 or np.any(n < 0):
        raise ValueError(f"augcond: class_counts must be a non-empty 1-D count array, got {n}")
    if mode == "balance":
        t = int(target) if target else int(n.max())
        return np.maximum(t - n, 0)
    if mode == "multiple":
        if multiple < 0:
            raise ValueError(f"augcond: multiple must be >= 0, got {multiple}")
        return int(multiple) * n
    if mode == "per_class":
        if per_class < 0:
            raise ValueError(f"augcond: per_class must be >= 0, got {per_class}")
        return np.full_like(n, int(per_class))
    raise ValueError(f"augcond: count mode must be one of {COUNT_MODES}, got {mode!r}")


@jax.jit
def _uniform_ints(keys: Array, maxvals: Array) -> Array:
    return jax.vmap(
        lambda k, m: jax.random.randint(jax.random.fold_in(k, STREAM_PARTNER), (), 0, m)
    )(keys, maxvals)


def same_class_partners(keys: Array, rows: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """A partner row of the same class for each example, drawn uniformly from its key.

    Example ``i`` with parent ``rows[i]`` gets a uniform draw among the *other* members of its
    class (``fold_in(keys[i], 19)``); a class with one member pairs the image with itself.
    """
    rows = np.asarray(rows, np.int64)
    labels = np.asarray(labels)
    if len(rows) == 0:
        return rows
    members = {int(c): np.flatnonzero(labels == c) for c in np.unique(labels[rows])}
    sizes = np.array([len(members[int(labels[r])]) for r in rows])
    u = np.asarray(_uniform_ints(jnp.asarray(keys), jnp.asarray(np.maximum(sizes - 1, 1))))
    out = np.empty_like(rows)
    for i, r in enumerate(rows):
        m = members[int(labels[r])]
        if len(m) == 1:
            out[i] = r
            continue
        pos = int(np.searchsorted(m, r))
        j = int(u[i])
        out[i] = m[j if j < pos else j + 1]
    return out


def plan_examples(labels: np.ndarray, counts: np.ndarray) -> list[dict[str, Any]]:
    """Every example of the run, numbered: class ``c``'s ``j``-th image has parent
    ``members_c[j mod n_c]`` (each real image is used equally often) and key ``ac-c…-j``."""
    labels = np.asarray(labels)
    plan: list[dict[str, Any]] = []
    for c, g in enumerate(np.asarray(counts)):
        members = np.flatnonzero(labels == c)
        if g and len(members) == 0:
            raise ValueError(f"augcond: class {c} has no real image to condition on")
        for j in range(int(g)):
            parent = int(members[j % len(members)])
            plan.append(dict(key=f"ac-c{c:04d}-{j:06d}", label=c, parent=parent))
    for e, item in enumerate(plan):
        item["example"] = e
    return plan


# ------------------------------------------------------------------------ the command


def _json_scalar(v: np.ndarray) -> Any:
    v = np.asarray(v)
    return int(v) if np.issubdtype(v.dtype, np.integer) else round(float(v), 6)


def generate(config: Any) -> dict[str, Any]:
    """``augdiff generate`` with ``method='augcond'``: augmented-conditioning images of the real
    training subset into the synthetic store (resumable; each process its own examples)."""

    ac = config.augcond
    aug = Augmentation.parse(
        ac.augmentation,
        alpha=float(ac.alpha),
        dropout_p=float(ac.dropout_p),
        dropout_rescale=bool(ac.get("dropout_rescale", True)),
        embed_cutmix_mode=str(ac.get("embed_cutmix_mode", "block")),
    )
    components, params = tiny.load_from_config(config.model, config.workdir, int(config.seed),
                                               "unclip")
    real = open_real_source(config.data, "train")
    labels = np.asarray(real.labels)
    counts = generation_counts(
        np.bincount(labels, minlength=real.num_classes),
        ac.count_mode,
        multiple=int(ac.multiple),
        per_class=int(ac.num_per_class),
        target=int(ac.balance_to),
    )
    plan = plan_examples(labels, counts)
    mine = plan[distributed.process_slice(len(plan))]
    mesh = distributed.make_mesh(devices=jax.local_devices())
    params = pipelines.place_params(params, mesh)
    base = jax.random.PRNGKey(int(config.seed))
    store_dir = config.get("store_dir", None) or os.path.join(config.workdir, "synthetic")
    res = int(ac.resolution)
    model_label = loading.model_label(components)
    manifest_cfg = dict(
        model=model_label,
        augmentation=aug.name,
        alpha=aug.alpha,
        dropout_p=aug.dropout,
        dropout_rescale=aug.dropout_rescale,
        embed_cutmix_mode=aug.embed_cutmix_mode,
        guidance=float(ac.guidance),
        steps=int(ac.steps),
        sampler=ac.sampler,
        noise_level=int(ac.noise_level),
        resolution=res,
        count_mode=ac.count_mode,
        num_classes=real.num_classes,
        class_names=list(real.class_names),
        planned_per_class=[int(c) for c in counts],
    )
    prompts = [ac.prompt_template.format(name.replace("_", " ")) for name in real.class_names]
    prompt_embeds = np.asarray(pipelines.encode_prompts(components, params, prompts))
    written = 0
    with StoreWriter(store_dir, method="augcond", config=manifest_cfg,
                     model=model_identity_of(components)) as store:
        for batch in pending_batches(store, mine, int(ac.batch_size), desc="augcond"):
            keys = example_keys(base, [it["example"] for it in batch])
            parents = np.array([it["parent"] for it in batch])
            partners = same_class_partners(keys, parents, labels) if aug.needs_partner else parents
            x1 = to_signed_rgb(np.stack([real.image(int(r)) for r in parents]))
            x2 = to_signed_rgb(np.stack([real.image(int(r)) for r in partners]))
            embeds, info = augmented_embeddings(
                components, params, aug, keys, x1, x2 if aug.needs_partner else None, mesh=mesh
            )
            lab = np.array([it["label"] for it in batch])
            images = generate_images(
                components,
                params,
                embeds,
                prompt_embeds[lab],
                keys,
                guidance_scale=float(ac.guidance),
                num_steps=int(ac.steps),
                sampler=ac.sampler,
                noise_level=int(ac.noise_level),
                height=res,
                width=res,
                mesh=mesh,
            )
            out = unit_to_store(images, int(config.data.image_size), int(config.data.channels))
            for i, (it, img) in enumerate(zip(batch, out, strict=True)):
                prov = dict(
                    parent=int(parents[i]),
                    parent_name=real.name_of(int(parents[i])),
                    partner=int(partners[i]) if aug.needs_partner else None,
                    partner_name=real.name_of(int(partners[i])) if aug.needs_partner else None,
                    augmentation=aug.name,
                    alpha=aug.alpha if aug.needs_partner else None,
                    dropout_p=aug.dropout,
                    params={k: _json_scalar(v[i]) for k, v in info.items()},
                    prompt=prompts[it["label"]],
                    guidance=float(ac.guidance),
                    steps=int(ac.steps),
                    sampler=ac.sampler,
                    noise_level=int(ac.noise_level),
                    seed=int(config.seed),
                    example=it["example"],
                    model=model_label,
                )
                if int(img.max()) == 0:
                    store.note("black_images")
                written += bool(store.add(it["key"], img, it["label"], source=1, provenance=prov))
    return dict(
        store=store_dir,
        augmentation=aug.name,
        planned=len(plan),
        planned_per_class=[int(c) for c in counts],
        this_process=len(mine),
        written=written,
        model=model_label,
    )
