"""Real image sources: an image-folder tree, the same tree inside a zip, or a TFDS dataset.

Every source is a grain random-access source (``__len__`` / ``__getitem__``) whose records are
dicts of numpy values (the augdiff record format)::

    image  uint8  [H, W, C]   resized/cropped to ``image_size``, ``channels`` 1 or 3
    label  int32  []          index into ``class_names`` (sorted class-folder names)
    source int32  []          0 = real
    weight float32 []         1.0
    index  int64  []          row within this source

Layouts: ``<root>/<split>/<class>/*.{jpg,jpeg,png,...}`` on disk, or the same tree inside a
zip read in place (the split directory may sit under any prefix, e.g. ``cifar10/train``).
TFDS datasets go through ``tfds.data_source`` (ArrayRecord), imported lazily.

Conversion: palette/alpha images are composited over white, then converted to ``L`` (1
channel) or ``RGB`` (3); images of another size are resized so their shorter side equals
``image_size`` (bicubic, antialiased by PIL when shrinking) and centre-cropped to a square.

Corrupt images. Checking 60k files up front would cost a full decode pass, so an image is
validated when it is read. A corrupt or unreadable file raises :class:`CorruptImageError`
naming it; with ``skip_corrupt`` it is logged, counted (``num_skipped`` in this process) and
deterministically replaced by the next readable row of the same class, so the stream length,
the labels array and every batch stay fixed. Empty classes and empty or missing splits are
errors at open time.

Zip handles are opened lazily in each process and dropped when pickled, so sources can be
shipped to grain worker processes.
"""

from __future__ import annotations

import io
import logging
import os
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from augdiff.data import subsets

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class CorruptImageError(ValueError):
    """An image could not be read or decoded; the message names the file."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"corrupt or unreadable image {name!r}: {reason}")
        self.name = name


class DataSourceError(ValueError):
    """A dataset layout is wrong (missing/empty split, empty class, bad config)."""


def _is_image_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


# --------------------------------------------------------------------------- conversion


def to_uint8_image(
    image: Image.Image | np.ndarray, image_size: int | None, channels: int
) -> np.ndarray:
    """Convert any PIL image / numpy array to uint8 ``[S, S, channels]`` (see module doc)."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image array, got {arr.dtype}")
        image = Image.fromarray(arr)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    image = image.convert("L" if channels == 1 else "RGB")
    if image_size:
        w, h = image.size
        if (w, h) != (image_size, image_size):
            scale = image_size / min(w, h)
            nw, nh = max(image_size, round(w * scale)), max(image_size, round(h * scale))
            if (nw, nh) != (w, h):
                image = image.resize((nw, nh), Image.Resampling.BICUBIC)
            left, top = (nw - image_size) // 2, (nh - image_size) // 2
            image = image.crop((left, top, left + image_size, top + image_size))
    arr = np.asarray(image, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def _decode(data: bytes | str, name: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise CorruptImageError(name, f"{type(e).__name__}: {e}") from None
    return image


# --------------------------------------------------------------------------- backends


def _scan_tree(entries: dict[str, list[str]], empty_dirs: Sequence[str], where: str, split: str):
    """Sorted class names, file list and labels from ``{class: [files]}``."""
    empty = sorted(set(empty_dirs) | {c for c, files in entries.items() if not files})
    if empty:
        raise DataSourceError(f"{where}: split {split!r} has empty class(es) {empty}")
    if not entries:
        raise DataSourceError(f"{where}: split {split!r} has no class folders with images")
    class_names = sorted(entries)
    files, labels = [], []
    for label, name in enumerate(class_names):
        members = sorted(entries[name])
        files += members
        labels += [label] * len(members)
    return class_names, files, np.asarray(labels, np.int32)


class _FolderBackend:
    def __init__(self, root: str, split: str):
        split_dir = _find_split_dir(root, split)
        entries: dict[str, list[str]] = {}
        empty: list[str] = []
        for cls in sorted(os.listdir(split_dir)):
            d = os.path.join(split_dir, cls)
            if not os.path.isdir(d) or cls.startswith("."):
                continue
            files = [os.path.join(d, f) for f in os.listdir(d) if _is_image_name(f)]
            entries[cls] = files
            if not files:
                empty.append(cls)
        self.class_names, self.files, self.labels = _scan_tree(entries, empty, split_dir, split)

    def __len__(self) -> int:
        return len(self.files)

    def name(self, j: int) -> str:
        return self.files[j]

    def read(self, j: int) -> Image.Image:
        path = self.files[j]
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise CorruptImageError(path, f"{type(e).__name__}: {e}") from None
        return _decode(data, path)


def _find_split_dir(root: str, split: str, max_depth: int = 3) -> str:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data path {root!r} is neither a directory nor a zip file")
    frontier = [root]
    for _ in range(max_depth + 1):
        hits = [os.path.join(d, split) for d in frontier if os.path.isdir(os.path.join(d, split))]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise DataSourceError(f"{root!r}: several {split!r} directories: {hits}")
        frontier = [
            os.path.join(d, e)
            for d in frontier
            for e in sorted(os.listdir(d))
            if not e.startswith(".") and os.path.isdir(os.path.join(d, e))
        ]
    raise DataSourceError(f"{root!r}: no {split!r} split directory (<root>/{split}/<class>/*.jpg)")


class _ZipBackend:
    """An image-folder tree inside a zip; the handle is opened lazily once per process."""

    def __init__(self, path: str, split: str):
        self.path = os.fspath(path)
        with zipfile.ZipFile(self.path) as zf:
            names = zf.namelist()
        # <prefix>/<split>/<class>/<file>: pick the shallowest prefix holding the split.
        by_prefix: dict[str, dict[str, list[str]]] = {}
        dirs_by_prefix: dict[str, set[str]] = {}
        for name in names:
            parts = name.split("/")
            for k in range(len(parts) - 2):
                if parts[k] != split:
                    continue
                prefix = "/".join(parts[:k])
                if len(parts) == k + 3 and _is_image_name(parts[-1]):
                    by_prefix.setdefault(prefix, {}).setdefault(parts[k + 1], []).append(name)
                elif len(parts) == k + 3 and parts[-1] == "" and parts[k + 1]:
                    dirs_by_prefix.setdefault(prefix, set()).add(parts[k + 1])
        if not by_prefix:
            raise DataSourceError(f"{self.path}: no images under any '{split}/<class>/' folder")
        depth = min(p.count("/") + bool(p) for p in by_prefix)
        best = [p for p in by_prefix if p.count("/") + bool(p) == depth]
        if len(best) > 1:
            raise DataSourceError(f"{self.path}: several {split!r} splits: {sorted(best)}")
        prefix = best[0]
        entries = by_prefix[prefix]
        empty = [d for d in dirs_by_prefix.get(prefix, ()) if d not in entries]
        where = f"{self.path}:{prefix + '/' if prefix else ''}{split}"
        self.class_names, self.files, self.labels = _scan_tree(entries, empty, where, split)
        self._zf: zipfile.ZipFile | None = None
        self._pid: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_zf"], state["_pid"] = None, None
        return state

    def _handle(self) -> zipfile.ZipFile:
        if self._zf is None or self._pid != os.getpid():
            self._zf, self._pid = zipfile.ZipFile(self.path), os.getpid()
        return self._zf

    def __len__(self) -> int:
        return len(self.files)

    def name(self, j: int) -> str:
        return f"{self.path}:{self.files[j]}"

    def read(self, j: int) -> Image.Image:
        try:
            data = self._handle().read(self.files[j])
        except (OSError, zipfile.BadZipFile, KeyError) as e:
            raise CorruptImageError(self.name(j), f"{type(e).__name__}: {e}") from None
        return _decode(data, self.name(j))


class _TfdsBackend:
    """``tfds.data_source(name, split=...)``; the ArrayRecord reader is reopened per process."""

    def __init__(self, name: str, split: str, data_dir: str | None, image_key: str, label_key: str):
        self.tfds_name, self.split, self.data_dir = name, split, data_dir
        self.image_key, self.label_key = image_key, label_key
        self._ds, self._pid = None, None
        ds = self._source()
        n = len(ds)
        if n == 0:
            raise DataSourceError(f"tfds {name!r}: split {split!r} is empty")
        feature = ds.dataset_info.features[label_key]
        self.class_names = list(getattr(feature, "names", None) or range(feature.num_classes))
        self.class_names = [str(c) for c in self.class_names]
        # Labels of every row (needed for subsets and class-balanced logic); one pass.
        self.labels = np.asarray([int(ds[i][label_key]) for i in range(n)], np.int32)
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        if (counts == 0).any():
            empty = [self.class_names[c] for c in np.flatnonzero(counts == 0)]
            raise DataSourceError(f"tfds {name!r}: split {split!r} has empty class(es) {empty}")

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_ds"], state["_pid"] = None, None
        return state

    def _source(self):
        if self._ds is None or self._pid != os.getpid():
            try:
                import tensorflow_datasets as tfds  # lazy: not installed on every machine
            except ImportError as e:
                raise DataSourceError(
                    f"data.tfds_name {self.tfds_name!r}: tensorflow-datasets is not installed "
                    f"({e}); point --config.data.path at an image folder or zip instead") from e
            try:
                self._ds = tfds.data_source(
                    self.tfds_name, split=self.split, data_dir=self.data_dir, download=False
                )
            except (KeyError, ValueError, FileNotFoundError, AssertionError) as e:
                # tfds.data_source reads prepared ArrayRecord files only (no TensorFlow):
                # a dataset that was never prepared, or prepared as TFRecord, lands here.
                where = (self.data_dir or os.environ.get("TFDS_DATA_DIR")
                         or "~/tensorflow_datasets")
                raise DataSourceError(
                    f"data.tfds_name {self.tfds_name!r}: split {self.split!r} is not prepared "
                    f"in ArrayRecord format under {where} ({type(e).__name__}); prepare "
                    "it with file_format='array_record', or point --config.data.path at an "
                    "image folder or zip") from e
            self._pid = os.getpid()
        return self._ds

    def __len__(self) -> int:
        return len(self.labels)

    def name(self, j: int) -> str:
        return f"tfds:{self.tfds_name}/{self.split}[{j}]"

    def read(self, j: int) -> np.ndarray:
        try:
            image = self._source()[j][self.image_key]
        except Exception as e:  # a broken record, whatever the decoder raised
            raise CorruptImageError(self.name(j), f"{type(e).__name__}: {e}") from None
        return np.asarray(image)


# --------------------------------------------------------------------------- the source


class RealSource:
    """A grain random-access source of real records (see the module docstring)."""

    def __init__(
        self,
        backend: _FolderBackend | _ZipBackend | _TfdsBackend,
        *,
        image_size: int | None,
        channels: int,
        skip_corrupt: bool = False,
        rows: np.ndarray | None = None,
        description: str = "",
    ):
        if channels not in (1, 3):
            raise DataSourceError(f"data.channels must be 1 or 3, got {channels}")
        self._backend = backend
        self.image_size = image_size
        self.channels = channels
        self.skip_corrupt = skip_corrupt
        self.class_names: list[str] = list(backend.class_names)
        self._rows = np.arange(len(backend)) if rows is None else np.asarray(rows, np.int64)
        self.labels: np.ndarray = np.asarray(backend.labels)[self._rows].astype(np.int32)
        self.description = description
        self._skipped: set[int] = set()
        self._class_members: dict[int, np.ndarray] = {}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_skipped(self) -> int:
        """Corrupt rows met (and replaced) so far in this process."""
        return len(self._skipped)

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        return f"RealSource({self.description}, n={len(self)}, classes={self.num_classes})"

    def name_of(self, i: int) -> str:
        """The file (or TFDS row) behind row ``i``: a stable id for provenance."""
        return self._backend.name(int(self._rows[i]))

    def _load(self, i: int) -> np.ndarray:
        image = self._backend.read(int(self._rows[i]))
        try:
            return to_uint8_image(image, self.image_size, self.channels)
        except (OSError, ValueError) as e:
            raise CorruptImageError(self.name_of(i), f"{type(e).__name__}: {e}") from None

    def _substitute(self, i: int) -> np.ndarray:
        """The next readable row of the same class after ``i`` (cyclically)."""
        label = int(self.labels[i])
        if label not in self._class_members:
            self._class_members[label] = np.flatnonzero(self.labels == label)
        members = self._class_members[label]
        start = int(np.searchsorted(members, i))
        for k in range(1, len(members)):
            j = int(members[(start + k) % len(members)])
            if j in self._skipped:
                continue
            try:
                return self._load(j)
            except CorruptImageError as e:
                self._note_skip(j, e)
        raise DataSourceError(f"every image of class {self.class_names[label]!r} is corrupt")

    def _note_skip(self, i: int, err: CorruptImageError) -> None:
        if i not in self._skipped:
            self._skipped.add(i)
            log.warning("skipping %s (%d skipped so far in this process)", err, len(self._skipped))

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i} out of range for a source of {len(self)} rows")
        i %= len(self)
        try:
            image = self._load(i)
        except CorruptImageError as e:
            if not self.skip_corrupt:
                raise
            self._note_skip(i, e)
            image = self._substitute(i)
        return {
            "image": image,
            "label": np.int32(self.labels[i]),
            "source": np.int32(0),
            "weight": np.float32(1.0),
            "index": np.int64(i),
        }

    def validate(self) -> list[str]:
        """Decode every row once; the names of the corrupt ones (raises unless skip_corrupt)."""
        bad = []
        for i in range(len(self)):
            try:
                self._load(i)
            except CorruptImageError as e:
                if not self.skip_corrupt:
                    raise
                self._note_skip(i, e)
                bad.append(e.name)
        return bad


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if value is None else value


def open_real_source(data_cfg: Any, split: str, *, subset: bool | None = None) -> RealSource:
    """Open split ``split`` of the dataset ``data_cfg`` describes.

    ``data_cfg`` fields: ``path`` (image-folder directory or zip) or ``tfds_name`` (with
    optional ``tfds_data_dir``, ``tfds_image_key``, ``tfds_label_key``); ``image_size``,
    ``channels``, ``skip_corrupt``; subset fields ``per_class`` (0 = all),
    ``imbalance_factor`` (1 = balanced) and ``subset_seed`` (see :mod:`augdiff.data.subsets`).

    Subsets apply to the ``train`` split only unless ``subset`` says otherwise, so test
    accuracy is always measured on the full test split.
    """
    path = _get(data_cfg, "path", "")
    tfds_name = _get(data_cfg, "tfds_name", "")
    if path and tfds_name:
        raise DataSourceError("data: set either data.path or data.tfds_name, not both")
    if not path and not tfds_name:
        raise DataSourceError("data: set data.path (image folder or zip) or data.tfds_name")
    if tfds_name:
        backend: Any = _TfdsBackend(
            tfds_name,
            split,
            _get(data_cfg, "tfds_data_dir", None) or None,
            _get(data_cfg, "tfds_image_key", "image"),
            _get(data_cfg, "tfds_label_key", "label"),
        )
        description = f"tfds:{tfds_name}/{split}"
    else:
        path = os.path.expanduser(os.fspath(path))
        if os.path.isfile(path) and zipfile.is_zipfile(path):
            backend = _ZipBackend(path, split)
        elif os.path.isdir(path):
            backend = _FolderBackend(path, split)
        elif os.path.exists(path):
            raise DataSourceError(f"data.path {path!r} is a file but not a zip archive")
        else:
            raise FileNotFoundError(
                f"data.path {path!r} does not exist: point --config.data.path at an image "
                "folder (root/<split>/<class>/*.png|jpg) or a zip of one, or use a TFDS "
                "dataset prepared in ArrayRecord format with --config.data.path= "
                "--config.data.tfds_name=cifar10")
        description = f"{path}/{split}"
    rows = None
    if subset if subset is not None else split == "train":
        rows = subsets.select_subset(
            backend.labels,
            per_class=int(_get(data_cfg, "per_class", 0)),
            imbalance_factor=float(_get(data_cfg, "imbalance_factor", 1.0)),
            seed=int(_get(data_cfg, "subset_seed", 0)),
            num_classes=len(backend.class_names),
        )
    size = _get(data_cfg, "image_size", None)
    return RealSource(
        backend,
        image_size=int(size) if size else None,
        channels=int(_get(data_cfg, "channels", 3)),
        skip_corrupt=bool(_get(data_cfg, "skip_corrupt", False)),
        rows=rows,
        description=description,
    )
