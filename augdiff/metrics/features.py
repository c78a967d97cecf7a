"""Pluggable feature extractors for the fidelity metrics: ``get_extractor(cfg) -> Extractor``.

Every extractor maps uint8 NHWC images to float32 features ``[B, D]`` and carries a ``name``
that reports print beside each number (an FID under one extractor is not comparable with an
FID under another).

- ``inception_v3``: pool3 of the FID Inception-v3 (:mod:`augdiff.metrics.inception`) with the
  standard weights from ``cfg.weights`` (a local ``pt_inception-2015-12-05-*.pth`` or ``.npz``).
  The FID standard; needs the weights file.
- ``clip``: image embeddings (vision tower + visual projection) of a CLIP vision model in
  a transformers folder at ``cfg.clip_path`` (``config.json`` plus ``model.safetensors`` or
  ``flax_model.msgpack``), loaded through :mod:`augdiff.sd.loading` (imported only here).
- ``reference`` (the default where no Inception/CLIP weights exist): the penultimate layer of
  the *reference classifier*, a small PreActResNet trained by augdiff on the full real
  training split and cached across runs (:mod:`augdiff.train.reference`, keyed by the data
  and the training config; the CIFAR-10 one at 16² ships with augdiff), with a texture block
  (spatial std of 32 fixed random 3x3 filters) beside the penultimate features so that noise
  is told from real images (:func:`reference_extractor`, below). It also classifies, which
  gives "classifier accuracy on generated samples".
- ``classifier``: the penultimate layer of an augdiff classifier trained on the real data,
  restored from its orbax checkpoint directory ``cfg.checkpoint`` (the extractor that works
  with no pretrained weights at all). ``cfg.random_init=True`` instead uses an *explicitly*
  randomly initialised network (named ``...:random-init`` in reports; for smoke tests only).

Missing files are errors naming what is missing; there is no silent fallback.

Batches are padded to a multiple of the mesh's batch shards, split over the ``('data',
'fsdp')`` axes with :func:`augdiff.distributed.shard_batch`, run through one jitted forward,
and trimmed (:func:`augdiff.distributed.unpad`).

Texture block of the reference extractor (``extractor.texture``, on by default): the
penultimate layer alone maps Gaussian noise *into* the real images' k-NN balls (measured on
CIFAR-10 at 16²: precision of noise 0.99, although FID(noise) is 55× the real floor), because
a classifier learns to ignore high-frequency energy. The extractor therefore concatenates two
blocks,

    f(x) = [ φ(x) / s_φ ,  τ(x) / s_τ ],   τ_c(x) = std_{i,j} (W_c ⋆ x)_{ij},

the penultimate features φ (what the image shows) and τ, the spatial standard deviation of
the responses of a fixed bank of 32 random 3×3 filters W (local contrast energy: the
randomly initialised embedding of Naeem et al. 2020, §5, reduced to its first layer;
``W = default_rng(0).standard_normal((3, 3, C, 32)) / sqrt(9 C)``, zero padding, pixels in
[-1, 1]). Each block is divided by its total standard deviation ``s = sqrt(tr Σ)`` on 1,000
images of the real training split (a seeded choice), so both weigh the same in FID and in the
k-NN radii. Measured there (1,000 real vs 500): precision of noise 0.00, FID(noise) / FID(floor)
≈ 120, and the generator's FID / floor ratio is larger than under φ alone (13× vs 10×).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from augdiff import distributed
from augdiff.data.selection import load_images, select_rows
from augdiff.data.sources import open_real_source
from augdiff.metrics import inception
from augdiff.models.classifiers import abstract_variables, get_classifier
from augdiff.sd import loading
from augdiff.train.checkpoint import restore_classifier_variables
from augdiff.train.reference import ensure_reference

EXTRACTORS = ("inception_v3", "clip", "classifier", "reference")


@dataclasses.dataclass(frozen=True)
class Extractor:
    """``fn(images uint8 [B, H, W, C]) -> float32 [B, D]`` for any B, and its report name.

    ``classify`` (classifier extractors only) maps images to predicted class ids ``[B]``.
    """

    name: str
    fn: Callable[[np.ndarray], np.ndarray]
    dim: int
    classify: Callable[[np.ndarray], np.ndarray] | None = None

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.fn(images)


def batched_apply(
    forward: Callable[[jax.Array], jax.Array],
    batch_size: int,
    mesh: Mesh | None = None,
    *,
    desc: str | None = None,
) -> Callable[[np.ndarray], np.ndarray]:
    """Wrap a per-batch ``forward`` into ``fn(images) -> features`` over any number of images.

    ``forward`` is jitted once; every batch has the same padded shape, is split over the mesh
    and the padding rows are dropped afterwards.
    """
    mesh = mesh if mesh is not None else distributed.make_mesh()
    shards = distributed.num_batch_shards(mesh)
    bs = max(shards, -(-int(batch_size) // shards) * shards)
    jitted = jax.jit(forward, out_shardings=distributed.replicated(mesh))

    def fn(images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4:
            raise ValueError(f"feature extractor: expected NHWC images, got shape {images.shape}")
        if images.dtype != np.uint8:
            raise ValueError(f"feature extractor: expected uint8 images, got {images.dtype}")
        out = []
        starts = range(0, len(images), bs)
        for s in tqdm(starts, desc=desc, disable=desc is None or len(starts) < 2, leave=False):
            chunk = images[s:s + bs]
            padded, n = distributed.pad_to_multiple(chunk, bs)
            feats = jitted(distributed.shard_batch(padded, mesh))
            out.append(np.asarray(distributed.unpad(feats, n), np.float32))
        if not out:
            raise ValueError("feature extractor: no images given")
        return np.concatenate(out, axis=0)

    return fn


# ---------------------------------------------------------------------------------------------
# Inception-v3


def inception_extractor(weights: str, batch_size: int = 64, mesh: Mesh | None = None) -> Extractor:
    """FID Inception-v3 pool3 features (2048-d) with the weights at ``weights``."""
    variables = inception.load_variables(weights)
    model = inception.FIDInceptionV3()

    def forward(x):
        return model.apply(variables, x)

    return Extractor("inception_v3", batched_apply(forward, batch_size, mesh, desc="inception"),
                     inception.FEATURE_DIM)


# ---------------------------------------------------------------------------------------------
# Classifier penultimate layer


def classifier_extractor(
    model: Any,
    variables: Any,
    name: str,
    *,
    image_size: int | None = None,
    batch_size: int = 256,
    mesh: Mesh | None = None,
) -> Extractor:
    """Penultimate features of an augdiff classifier ``model`` with ``variables``.

    Images are mapped to [-1, 1] (the models' convention) and, when ``image_size`` is given
    and differs, resized bilinearly to it.
    """
    variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}

    def forward(images):
        x = images.astype(jnp.float32) / 127.5 - 1.0
        if image_size is not None and x.shape[1:3] != (image_size, image_size):
            x = jax.image.resize(x, (x.shape[0], image_size, image_size, x.shape[3]), "linear")
        return model.apply(variables, x, train=False, method="features").astype(jnp.float32)

    def predict(images):
        x = images.astype(jnp.float32) / 127.5 - 1.0
        if image_size is not None and x.shape[1:3] != (image_size, image_size):
            x = jax.image.resize(x, (x.shape[0], image_size, image_size, x.shape[3]), "linear")
        return jnp.argmax(model.apply(variables, x, train=False), axis=-1).astype(jnp.int32)

    size = image_size or 32
    probe = jax.eval_shape(forward, jax.ShapeDtypeStruct((1, size, size, 3), jnp.uint8))
    fn = batched_apply(forward, batch_size, mesh, desc=name)
    classify = batched_apply(predict, batch_size, mesh)
    return Extractor(name, fn, int(probe.shape[-1]),
                     classify=lambda im: classify(im).astype(np.int64))


def _classifier_from_config(cfg: ml_collections.ConfigDict, num_classes: int | None,
                            mesh: Mesh | None) -> Extractor:
    n = int(cfg.get("num_classes", 0) or 0) or num_classes
    if not n:
        raise ValueError("classifier extractor: set extractor.num_classes (or pass num_classes)")
    arch = cfg.get("classifier", "preact_resnet18")
    width = int(cfg.get("width", 64))
    size = int(cfg.get("image_size", 32))
    model = get_classifier(arch, int(n), width=width, stem=cfg.get("stem", "") or None)
    label = f"classifier:{arch}-w{width}"
    if cfg.get("random_init", False):
        if cfg.get("checkpoint", ""):
            raise ValueError("classifier extractor: set either extractor.checkpoint or "
                             "extractor.random_init, not both")
        seed = int(cfg.get("seed", 0))
        variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, size, size, 3)), train=False))(
            jax.random.key(seed))
        label += f":random-init(seed={seed})"
    else:
        ckpt = cfg.get("checkpoint", "")
        abstract = abstract_variables(model, size, 3)
        variables = restore_classifier_variables(ckpt, abstract)
        label += f":{os.path.basename(os.path.dirname(os.path.abspath(ckpt)))}"
    return classifier_extractor(model, variables, label, image_size=size,
                                batch_size=int(cfg.get("batch_size", 256)), mesh=mesh)


# ---------------------------------------------------------------------------------------------
# CLIP


def _clip_from_config(cfg: ml_collections.ConfigDict, mesh: Mesh | None) -> Extractor:
    path = cfg.get("clip_path", "")
    if not path or not os.path.isdir(path):
        raise FileNotFoundError(
            f"clip extractor: no CLIP vision model folder at {path!r} (set extractor.clip_path to "
            "a transformers CLIPVisionModelWithProjection folder: config.json + weights)"
        )
    from transformers import CLIPVisionConfig, FlaxCLIPVisionModel

    path = os.path.abspath(path)
    model, params, _ = loading._load_transformers_component(
        os.path.dirname(path), os.path.basename(path), CLIPVisionConfig, FlaxCLIPVisionModel,
        "auto", jnp.float32, vision=True)
    size = int(model.config.image_size)
    mean = jnp.asarray(cfg.get("clip_mean", (0.48145466, 0.4578275, 0.40821073)), jnp.float32)
    std = jnp.asarray(cfg.get("clip_std", (0.26862954, 0.26130258, 0.27577711)), jnp.float32)
    module = model.module
    tower = {k: v for k, v in params.items() if k != "visual_projection"}
    proj = params["visual_projection"]["kernel"]

    def forward(images):
        x = images.astype(jnp.float32) / 255.0
        x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "cubic")
        x = ((x - mean) / std).transpose(0, 3, 1, 2)  # the HF module takes NCHW pixel values
        pooled = module.apply({"params": tower}, x).pooler_output
        return pooled @ proj

    name = f"clip:{os.path.basename(path)}"
    return Extractor(name, batched_apply(forward, int(cfg.get("batch_size", 64)), mesh, desc=name),
                     int(proj.shape[-1]))


# ---------------------------------------------------------------------------------------------
# The reference classifier, with its texture block


TEXTURE_FILTERS = 32
TEXTURE_SEED = 0
SCALE_IMAGES = 1000


def texture_filters(channels: int = 3, num: int = TEXTURE_FILTERS,
                    seed: int = TEXTURE_SEED) -> np.ndarray:
    """The fixed random filter bank ``W [3, 3, channels, num]`` of the texture block:
    i.i.d. standard normal entries scaled by ``1 / sqrt(9 · channels)`` (numpy's PCG64
    generator, so the bank does not depend on the JAX version)."""
    w = np.random.default_rng(seed).standard_normal((3, 3, int(channels), int(num)))
    return (w / np.sqrt(9.0 * channels)).astype(np.float32)


def texture_features(x: Any, filters: Any) -> Any:
    """``τ(x)``: per filter, the spatial standard deviation of ``filters ⋆ x`` (NHWC images
    in [-1, 1], zero padding, stride 1): ``[B, num_filters]``."""
    y = jax.lax.conv_general_dilated(
        x.astype(jnp.float32), jnp.asarray(filters), (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST)
    return jnp.std(y, axis=(1, 2))


def total_std(features: np.ndarray) -> float:
    """``sqrt(tr Σ)`` of a block of features (rows = images; Σ with ddof = 1)."""
    f = np.asarray(features, np.float64)
    return float(np.sqrt(np.sum(np.var(f, axis=0, ddof=1))))


def with_texture(base: Extractor, data: Any, *, image_size: int, batch_size: int = 256,
                 mesh: Mesh | None = None) -> Extractor:
    """The two-block extractor ``[φ / s_φ, τ / s_τ]`` of the module docstring over the
    classifier extractor ``base`` (φ, which also classifies); the scales come from
    :data:`SCALE_IMAGES` rows of ``data``'s real training split."""
    channels = int(data.get("channels", 3) or 3)
    filters = texture_filters(channels)

    def forward(images):
        x = images.astype(jnp.float32) / 127.5 - 1.0
        if x.shape[1:3] != (image_size, image_size):
            x = jax.image.resize(x, (x.shape[0], image_size, image_size, x.shape[3]), "linear")
        return texture_features(x, filters)

    tex = batched_apply(forward, batch_size, mesh)
    train = open_real_source(data, str(data.get("train_split", "train")), subset=False)
    scale_images, _ = load_images(train, select_rows(np.asarray(train.labels), None,
                                                     SCALE_IMAGES, 0))
    s_phi, s_tau = total_std(base(scale_images)), total_std(tex(scale_images))

    def fn(images: np.ndarray) -> np.ndarray:
        return np.concatenate([base(images) / s_phi, tex(images) / s_tau], axis=1)

    return Extractor(f"{base.name}+texture({TEXTURE_FILTERS} random 3x3)", fn,
                     int(base.dim) + TEXTURE_FILTERS, classify=base.classify)


def reference_extractor(cfg: Any, data: Any, *, mesh: Mesh | None = None) -> Extractor:
    """The penultimate-layer extractor (with ``classify``) of the cached reference classifier,
    named ``reference:<model>-w<width>:<key>(top-1 x%)``."""
    rec = ensure_reference(cfg, data)
    n = int(rec.get("num_classes", 0) or 0)
    if not n:
        n = open_real_source(data, str(data.get("test_split", "test")), subset=False).num_classes
    model = get_classifier(rec["model"], n, width=int(rec["width"]),
                           stem=rec.get("stem", "") or None)
    variables = restore_classifier_variables(
        rec["checkpoints"], abstract_variables(model, int(rec["image_size"]), 3))
    name = (f"reference:{rec['model']}-w{rec['width']}:{rec['key'][:8]}"
            f"(full train split, test top-1 {100 * float(rec['test_top1']):.1f}%)")
    base = classifier_extractor(model, variables, name, image_size=int(rec["image_size"]),
                                batch_size=int(cfg.get("batch_size", 256)), mesh=mesh)
    if not cfg.get("texture", True):
        return base
    return with_texture(base, data, image_size=int(rec["image_size"]),
                        batch_size=int(cfg.get("batch_size", 256)), mesh=mesh)


def get_extractor(
    cfg: ml_collections.ConfigDict,
    *,
    num_classes: int | None = None,
    mesh: Mesh | None = None,
    data: ml_collections.ConfigDict | None = None,
) -> Extractor:
    """Build the extractor ``cfg.name`` (one of :data:`EXTRACTORS`) from its config block.

    ``data`` (the experiment's ``data`` block) names the real data the ``reference``
    classifier is trained on."""
    name = cfg.get("name", "")
    if name == "reference":
        if data is None:
            raise ValueError("reference extractor: needs the data config (get_extractor(..., "
                             "data=config.data))")
        return reference_extractor(cfg, data, mesh=mesh)
    if name == "inception_v3":
        return inception_extractor(cfg.get("weights", ""), int(cfg.get("batch_size", 64)), mesh)
    if name == "classifier":
        return _classifier_from_config(cfg, num_classes, mesh)
    if name == "clip":
        return _clip_from_config(cfg, mesh)
    raise ValueError(f"extractor.name {name!r} unknown; choose one of {', '.join(EXTRACTORS)}")
