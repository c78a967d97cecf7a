"""The reference classifier's training recipe: a real-data classifier trained once per dataset
and cached.

It serves two measurements that need a network which has *learned* the real data (both in
:mod:`augdiff.metrics`):

- the default feature extractor of the fidelity metrics when no Inception / CLIP weights are
  available (``extractor.name = "reference"``, :func:`augdiff.metrics.features.reference_extractor`:
  its penultimate layer, as the ``classifier`` extractor, beside a texture block); a network
  trained on a 1,000-image subset for a few epochs maps Gaussian noise and CIFAR-10 to
  overlapping features, one trained on the full split does not (see the noise control rows of
  :func:`augdiff.metrics.evaluate.evaluate_store`);
- "classifier accuracy on generated samples": the share of class-conditional samples that
  this classifier assigns to their conditioning class (10 % is chance on CIFAR-10).

It is trained with ``augdiff train``'s loop (:func:`augdiff.train.classifier.train_and_evaluate`)
on the *full* training split of the experiment's data (``data.per_class`` and
``data.imbalance_factor`` are ignored) with the recipe of ``extractor.reference``
(``configs/classify_cifar10.py:reference`` by default). The run lives in
``<cache>/reference_classifiers/<key>/`` where ``key`` hashes the data's identity (resolved
path, size and modification time of the zip or folder, or the TFDS name), the image size and
channels, the splits and the training config; ``<cache>`` is ``extractor.cache_dir``, else
``$AUGDIFF_CACHE``, else ``~/.cache/augdiff``. A finished run writes ``reference.json`` and is
reused by every later run; a killed one resumes from its checkpoint. Reference classifiers
placed in ``augdiff/assets/reference_classifiers/<key>/`` (the same layout, written by
:func:`export_reference`: parameters and BatchNorm statistics only) are found before the cache:
augdiff ships the CIFAR-10 one at 16², so the quickstart does not train it; the key of a zip
does not depend on where it lies.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from typing import Any

import jax
import ml_collections

from augdiff.config import ASSETS_DIR, load_config, resolve_path, to_dict
from augdiff.files import read_json, write_json
from augdiff.models.classifiers import abstract_variables, get_classifier
from augdiff.train import classifier
from augdiff.train.checkpoint import Checkpointer, restore_classifier_variables

DEFAULT_SPEC = "configs/classify_cifar10.py:reference"
# Data fields copied from the experiment into the reference run (the subset fields are not).
DATA_FIELDS = ("path", "tfds_name", "image_size", "channels", "train_split",
               "test_split")
# Reference classifiers shipped inside the package (found before the cache, same layout).
SHIPPED = ASSETS_DIR
# Fields that do not change the trained weights (left out of the key).
_VOLATILE = ("workdir", "progress", "log_every_steps", "num_workers", "eval_cache",
             "eval_every_epochs")


def cache_root(cfg: Any = None) -> str:
    """``extractor.cache_dir`` or ``$AUGDIFF_CACHE`` or ``~/.cache/augdiff``."""
    given = str(cfg.get("cache_dir", "") or "") if cfg is not None else ""
    return os.path.abspath(os.path.expanduser(
        given or os.environ.get("AUGDIFF_CACHE", "") or "~/.cache/augdiff"))


def data_identity(data: Any) -> dict[str, Any]:
    """What identifies the real data, independent of where it lies: for a zip, sha256 of its
    member list (names, sizes and CRC-32s, read from the central directory); for a folder,
    of its relative file names and sizes; for TFDS, the dataset name."""
    path = str(data.get("path", "") or "")
    if not path:
        return {"tfds_name": str(data.get("tfds_name", ""))}
    full = os.path.realpath(os.path.expanduser(path))
    h = hashlib.sha256()
    if os.path.isfile(full) and zipfile.is_zipfile(full):
        with zipfile.ZipFile(full) as zf:
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                h.update(f"{info.filename}\0{info.file_size}\0{info.CRC}\n".encode())
        kind = "zip"
    elif os.path.isdir(full):
        for root, dirs, files in os.walk(full):
            dirs.sort()
            for name in sorted(files):
                p = os.path.join(root, name)
                h.update(f"{os.path.relpath(p, full)}\0{os.path.getsize(p)}\n".encode())
        kind = "folder"
    else:
        raise FileNotFoundError(f"reference classifier: data.path {path!r} does not exist")
    return {"kind": kind, "listing_sha256": h.hexdigest()}


def reference_config(cfg: Any, data: Any) -> ml_collections.ConfigDict:
    """The training config of the reference classifier: ``cfg.reference`` (a config spec)
    with the experiment's data fields, the full training split, and ``cfg.reference_epochs``
    (when > 0) as the number of epochs. ``workdir`` is left for :func:`ensure_reference`."""
    sub = load_config(str(cfg.get("reference", "") or DEFAULT_SPEC))
    for key in DATA_FIELDS:
        if key in data and key in sub.data:
            sub.data[key] = data[key]
    if "path" in data and str(data.path or ""):
        sub.data.path = resolve_path(str(data.path))
    sub.data.per_class = 0
    sub.data.imbalance_factor = 1.0
    if "synthetic" in sub:  # a judge trained on real data only, whatever the spec says
        sub.synthetic.path = ""
        if "online" in sub.synthetic:
            sub.synthetic.online.kind = "none"
    if int(cfg.get("reference_epochs", 0) or 0) > 0:
        sub.epochs = int(cfg.reference_epochs)
    if "mesh" in sub and "mesh" in cfg:
        sub.mesh = cfg.mesh
    return sub


def reference_key(sub: ml_collections.ConfigDict) -> str:
    """16 hex digits of sha256 over the data identity and the training config."""
    d = to_dict(sub)
    d.get("data", {}).pop("path", None)  # where the data lies is not part of what it is
    d.pop("mesh", None)
    # Real data only (reference_config): the synthetic-data fields cannot change the weights,
    # and fields added to them later must not move the key off a shipped or cached copy.
    d.pop("synthetic", None)

    def strip(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in _VOLATILE}
        return x

    text = json.dumps({"data": data_identity(sub.data), "config": strip(d)}, sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def ensure_reference(cfg: Any, data: Any, *, log: Any = print) -> dict[str, Any]:
    """Train the reference classifier unless the cache holds it; return its record
    ``{"key", "workdir", "checkpoints", "model", "width", "image_size", "num_train",
    "test_top1", "epochs"}`` (also in ``<run>/reference.json``)."""
    sub = reference_config(cfg, data)
    key = reference_key(sub)
    for root in (SHIPPED, cache_root(cfg)):
        found = os.path.join(root, "reference_classifiers", key, "reference.json")
        if os.path.exists(found):
            rec = read_json(found)
            base = os.path.dirname(found)
            return {**rec, "workdir": base, "checkpoints": os.path.join(base, "checkpoints")}
    run = os.path.join(cache_root(cfg), "reference_classifiers", key)
    done_file = os.path.join(run, "reference.json")
    sub.workdir = run
    os.makedirs(run, exist_ok=True)
    log(f"reference classifier: training {sub.model.name} (width {sub.model.width}) on the full "
        f"training split, {sub.epochs} epochs, cached in {run}")
    result = classifier.train_and_evaluate(sub)
    rec = {"key": key, "workdir": run, "checkpoints": os.path.join(run, "checkpoints"),
           "model": str(sub.model.name), "width": int(sub.model.width),
           "stem": str(sub.model.get("stem", "") or ""),
           "image_size": int(sub.data.image_size), "num_classes": int(result.get(
               "num_classes", 0) or 0),
           "num_train": int(result.get("train_examples", 0) or 0),
           "test_top1": float(result["test_top1"]), "epochs": int(sub.epochs),
           "data": data_identity(sub.data)}
    if jax.process_index() == 0:
        write_json(done_file, rec)
    return rec


def export_reference(workdir: str, dest_root: str, *, record: dict[str, Any] | None = None,
                     ) -> str:
    """Copy the reference classifier of run ``workdir`` (its latest checkpoint and
    ``reference.json``) into ``dest_root/reference_classifiers/<key>/``: parameters and
    BatchNorm statistics only (no optimiser state), in the layout :func:`ensure_reference`
    finds. Returns the destination."""
    src = os.path.join(workdir, "checkpoints")
    rec = dict(record) if record is not None else read_json(
        os.path.join(workdir, "reference.json"))
    ckpt = Checkpointer(src, max_to_keep=None)
    try:
        step = ckpt.latest_step()
    finally:
        ckpt.close()
    if step is None:
        raise FileNotFoundError(f"export_reference: no checkpoint in {src!r}")
    model = get_classifier(rec["model"], int(rec["num_classes"]), width=int(rec["width"]),
                           stem=rec.get("stem", "") or None)
    tree = restore_classifier_variables(src, abstract_variables(model, int(rec["image_size"]),
                                                                3), step)
    out = os.path.join(dest_root, "reference_classifiers", str(rec["key"]))
    if os.path.exists(out):
        shutil.rmtree(out)
    with Checkpointer(os.path.join(out, "checkpoints"), max_to_keep=None) as ck:
        ck.save(step, tree, {"note": "parameters and BatchNorm statistics of the reference "
                                     "classifier"})
    for root, _, files in os.walk(out):  # orbax writes the machine's path into this marker
        if "commit_success.txt" in files:
            with open(os.path.join(root, "commit_success.txt"), "w") as f:
                f.write("Checkpoint commit was successful.")
    rec = {k: v for k, v in rec.items() if k not in ("workdir", "checkpoints")}
    write_json(os.path.join(out, "reference.json"), rec)
    return out
