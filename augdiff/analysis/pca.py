"""2-D PCA of CLIP image embeddings of original, generated and hybrid sets (seed 000 Fig. 3).

Seed 000 projects the CLIP image embeddings of the real images, their InstructPix2Pix edits
and the DiffuseMix hybrids onto the first two principal components of the pooled data and
colours the points by prompt, to show how far each prompt moves the data from the real
distribution. PCA here is the SVD of the centred data matrix::

    X − 1 μᵀ = U Σ Vᵀ,   components = rows of Vᵀ,   variance_k = σ_k² / (N − 1)

with each component's sign fixed so that its largest-magnitude loading is positive (the
result is then deterministic). Plots use matplotlib's object API on an Agg canvas, so no
global pyplot state is touched.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from augdiff.distributed import pad_to_multiple, unpad


@dataclasses.dataclass(frozen=True)
class PCAResult:
    """Principal axes of a data set.

    mean: [D] data mean ``μ``. components: [k, D] orthonormal principal axes (rows of ``Vᵀ``).
    explained_variance: [k] ``σ_k² / (N − 1)``. explained_variance_ratio: [k] share of the
    total variance.
    """

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray

    def transform(self, x: np.ndarray | jax.Array) -> np.ndarray:
        """Coordinates ``(x − μ) Vₖ`` [N, k] of rows ``x`` [N, D] on the principal axes."""
        x = np.asarray(x, np.float64)
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"expected [N, {self.mean.shape[0]}] rows, got {x.shape}")
        return (x - self.mean) @ self.components.T


@jax.jit
def _svd_pca(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    mean = x.mean(axis=0)
    _, s, vt = jnp.linalg.svd(x - mean, full_matrices=False)
    # Deterministic signs: the largest-|loading| entry of each axis is positive.
    pivot = jnp.take_along_axis(vt, jnp.argmax(jnp.abs(vt), axis=1)[:, None], axis=1)
    vt = vt * jnp.where(pivot < 0, -1.0, 1.0)
    return mean, s, vt


def fit_pca(x: np.ndarray | jax.Array, n_components: int = 2) -> PCAResult:
    """PCA of rows ``x`` [N, D] by SVD of the centred matrix (see module docstring)."""
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 2:
        raise ValueError(f"pca needs a 2-D [N, D] matrix, got shape {tuple(x.shape)}")
    n, d = x.shape
    if n < 2:
        raise ValueError(f"pca needs at least 2 rows, got {n}")
    if not 1 <= n_components <= min(n, d):
        raise ValueError(
            f"n_components must be in [1, min(N, D) = {min(n, d)}], got {n_components}"
        )
    if not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError("pca input contains NaN or inf")
    mean, s, vt = _svd_pca(x)
    var = np.asarray(s, np.float64) ** 2 / (n - 1)
    total = var.sum()
    ratio = var / total if total > 0 else np.zeros_like(var)
    return PCAResult(
        mean=np.asarray(mean, np.float64),
        components=np.asarray(vt[:n_components], np.float64),
        explained_variance=var[:n_components],
        explained_variance_ratio=ratio[:n_components],
    )


def embed_images(
    embed_fn: Callable[[jax.Array], jax.Array],
    images: np.ndarray | jax.Array,
    batch_size: int = 256,
    progress: bool = True,
) -> np.ndarray:
    """``embed_fn`` over ``images`` [N, H, W, C] in fixed-size batches (the last one padded, so
    a jitted ``embed_fn`` compiles once), e.g. ``partial(clip_image_embeddings, clip_model)``."""
    n = len(images)
    if n == 0:
        raise ValueError("embed_images got no images")
    out = []
    for start in tqdm(range(0, n, batch_size), desc="embed", disable=not progress):
        chunk, m = pad_to_multiple(np.asarray(images[start : start + batch_size]), batch_size)
        out.append(np.asarray(unpad(embed_fn(jnp.asarray(chunk)), m)))
    return np.concatenate(out, axis=0)


def set_centroids(
    result: PCAResult, embeddings: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Mean PCA coordinates of each named set (how far generated/hybrid sets drift)."""
    return {name: result.transform(e).mean(axis=0) for name, e in embeddings.items()}


_MARKERS = ("o", "^", "s", "D", "v", "P", "X", "*")


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def plot_embedding_pca(
    embeddings: Mapping[str, np.ndarray],
    path: str | os.PathLike[str],
    *,
    prompts: Mapping[str, Sequence[str]] | None = None,
    normalize: bool = True,
    title: str = "PCA of CLIP image embeddings",
    dpi: int = 120,
) -> PCAResult:
    """Fit a 2-D PCA on all sets pooled and save the scatter plot as a PNG (seed 000 Fig. 3).

    Args:
      embeddings: set name (e.g. ``original``, ``generated``, ``hybrid``) → [N_s, D] embeddings.
      path: output ``.png`` path (parent folders are created).
      prompts: optional set name → the prompt of each row; points are coloured by prompt (rows
        of sets without prompts, such as the originals, are grey). Without prompts, colour is
        by set. Marker shape always encodes the set.
      normalize: L2-normalise embeddings first (CLIP compares directions).

    Returns:
      The fitted :class:`PCAResult`.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not embeddings:
        raise ValueError("plot_embedding_pca needs at least one embedding set")
    sets = {k: np.asarray(v, np.float64) for k, v in embeddings.items()}
    dims = {v.shape[1] if v.ndim == 2 else None for v in sets.values()}
    if len(dims) != 1 or None in dims:
        shapes = {k: v.shape for k, v in sets.items()}
        raise ValueError(f"every set must be [N, D] with one common D; got {shapes}")
    prompts = dict(prompts or {})
    for k, p in prompts.items():
        if k not in sets:
            raise ValueError(f"prompts given for unknown set {k!r}; sets are {list(sets)}")
        if len(p) != len(sets[k]):
            raise ValueError(f"set {k!r} has {len(sets[k])} rows but {len(p)} prompts")
    if normalize:
        sets = {k: _l2_normalise(v) for k, v in sets.items()}
    result = fit_pca(np.concatenate(list(sets.values()), axis=0), 2)

    fig = Figure(figsize=(6.5, 5.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    cmap = colormaps["tab10"]
    labels = sorted({p for ps in prompts.values() for p in ps}) if prompts else list(sets)
    colour = {name: cmap(i % 10) for i, name in enumerate(labels)}
    for si, (name, emb) in enumerate(sets.items()):
        xy = result.transform(emb)
        marker = _MARKERS[si % len(_MARKERS)]
        if prompts:
            row_prompts = np.asarray(prompts.get(name, [None] * len(emb)), dtype=object)
            for p in dict.fromkeys(row_prompts.tolist()):
                sel = row_prompts == p
                c = "0.55" if p is None else colour[p]
                lab = f"{name}" if p is None else f"{name}: {p}"
                ax.scatter(
                    xy[sel, 0], xy[sel, 1], s=14, marker=marker, color=c, alpha=0.75,
                    label=lab, edgecolors="none",
                )
        else:
            ax.scatter(
                xy[:, 0], xy[:, 1], s=14, marker=marker, color=colour[name], alpha=0.75,
                label=name, edgecolors="none",
            )
    r = result.explained_variance_ratio
    ax.set_xlabel(f"PC1 ({100 * r[0]:.1f}% var.)")
    ax.set_ylabel(f"PC2 ({100 * r[1]:.1f}% var.)")
    ax.set_title(title)
    ax.legend(fontsize=7, markerscale=1.2, loc="best", frameon=False)
    fig.tight_layout()
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return result


def project_on_originals(
    embeddings: Mapping[str, np.ndarray], fit_on: str = "original", n_components: int = 2,
) -> tuple[PCAResult, dict[str, np.ndarray]]:
    """Seed 000 Fig. 3's projection: PCA fitted on the ORIGINALS' embeddings alone (the
    seed 000 code fits ``PCA(2)`` on the original set and transforms every other set with
    it), raw embeddings (no normalisation). Returns ``(pca, {set: coords [N_s, k]})``."""
    if fit_on not in embeddings:
        raise ValueError(f"project_on_originals: no set {fit_on!r} among {list(embeddings)}")
    pca = fit_pca(np.asarray(embeddings[fit_on], np.float64), n_components)
    return pca, {k: pca.transform(v) for k, v in embeddings.items()}


def spread(coords: np.ndarray) -> float:
    """Total variance of a set of points (trace of its covariance, ``ddof = 1``)."""
    c = np.asarray(coords, np.float64)
    return float(np.trace(np.atleast_2d(np.cov(c.T)))) if len(c) > 1 else 0.0


def plot_panels(
    panels: Sequence[tuple[str, Mapping[str, np.ndarray]]], path: str | os.PathLike[str],
    *, pca: PCAResult | None = None, ncols: int = 2, dpi: int = 110,
) -> str:
    """Scatter panels of 2-D coordinates (``[(title, {label: coords [N, 2]})]``) on one PNG
    (Agg canvas, no pyplot state). Labels are coloured in order; ``original`` is grey."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(5.2 * ncols, 4.4 * nrows))
    FigureCanvasAgg(fig)
    cmap = colormaps["tab10"]
    for i, (title, sets) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for j, (label, xy) in enumerate(sets.items()):
            xy = np.asarray(xy)
            grey = label.lower().startswith("original")
            ax.scatter(xy[:, 0], xy[:, 1], s=9, alpha=0.55, edgecolors="none",
                       color="0.6" if grey else cmap(j % 10), label=label,
                       marker=_MARKERS[j % len(_MARKERS)])
        ax.set_title(title, fontsize=9)
        if pca is not None:
            r = pca.explained_variance_ratio
            ax.set_xlabel(f"PC1 of originals ({100 * r[0]:.1f}%)", fontsize=8)
            ax.set_ylabel(f"PC2 of originals ({100 * r[1]:.1f}%)", fontsize=8)
        ax.legend(fontsize=6, markerscale=1.3, loc="best", frameon=False)
    fig.tight_layout()
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path
