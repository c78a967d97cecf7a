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

Labels are by class NAME: every split's labels come from :func:`assign_labels` against
one reference order (the training split's sorted class folders, or a list given, e.g. a
store's), and a split whose class set differs is an error naming what it lacks and adds.
Class folder names are validated (:func:`class_name_problem`: no empty, ``.``, ``..``, path
separators or control characters; a zip member ``train/../x.png`` is an error naming it);
hidden folders and files (leading dot) and non-image files are ignored and listed by the
pre-scan. Image files: ``.jpg .jpeg .jpe .jfif .png .bmp .webp .tif .tiff .gif`` (any case).

Conversion (:func:`to_uint8_image`): the first frame (GIF, TIFF pages), EXIF orientation
applied; 16-bit and 32-bit integer modes (``I;16*``, ``I``) scaled ``round(x / 257)`` to
8 bits, float ``F`` by its range; palette images (with or without a transparent index),
``LA``, ``RGBA`` and anything with transparency composited OVER WHITE (alpha is never just
dropped); CMYK, ``1``, YCbCr by Pillow's conversion; then ``L`` (1 channel) or ``RGB`` (3).
Images of another size are resized so their shorter side equals ``image_size`` (bicubic,
antialiased by PIL when shrinking) and centre-cropped to a square.

Corrupt images. :func:`prescan` reads and decodes every file of the splits a run uses
before anything compiles (training calls it first) and reports every problem at once, each
with its fix (``data.skip_corrupt=True``, ``data.per_class=0``, ...). With ``skip_corrupt``
the unreadable files it found are left out of the sources (``skip=``) and counted in the run
record (``skipped_images``). A file that fails only later, at read time, raises
:class:`CorruptImageError` naming it; with ``skip_corrupt`` it is logged, counted
(``num_skipped``) and replaced by the next readable row of the same class for TRAINING
batches only; :meth:`RealSource.image` (what generation reads parents with) never
substitutes. Empty classes and empty or missing splits are errors at open time.

Zip handles are opened lazily in each process and dropped when pickled, so sources can be
shipped to grain worker processes.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import time
import unicodedata
import zipfile
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from augdiff.data import subsets

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif",
)


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


def _mode_to_8bit(image: Image.Image) -> Image.Image:
    """Integer / float single-channel modes to ``L`` by their range (see the module doc).

    ``I;16*`` (16-bit PNG/TIFF) and ``I`` (what 16-bit files may also open as) hold
    0..65535: ``round(x / 257)`` maps 65535 to 255 exactly. ``F`` (float TIFF): ``[0, 1]``
    when its maximum is at most 1, else ``[0, 255]``; clipped.
    """
    arr = np.asarray(image)
    if image.mode == "F":
        arr = arr.astype(np.float64)
        scale = 255.0 if np.nanmax(arr, initial=0.0) <= 1.0 else 1.0
        out = np.clip(np.rint(np.nan_to_num(arr) * scale), 0, 255)
    else:
        out = np.rint(np.clip(arr.astype(np.float64), 0, 65535) / 257.0)
    return Image.fromarray(out.astype(np.uint8), "L")


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
    if image.mode.startswith("I") or image.mode == "F":
        image = _mode_to_8bit(image)
    if image.mode == "P" or image.mode.endswith(("a", "A")) or "transparency" in image.info:
        # palette (with or without a transparent index), LA, PA, RGBA, La, RGBa, and L/RGB
        # with a transparent colour: composite over white.
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


def _decode(data: bytes | str, name: str, draft: int | None = None) -> Image.Image:
    """Open and fully decode an image's first frame, EXIF orientation applied.

    ``draft``: let JPEG decode at a reduced scale no smaller than ``draft`` pixels (the
    whole entropy-coded stream is still read, so truncation is still caught); the
    pre-scan's speed-up.
    """
    try:
        image = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        if draft and image.format == "JPEG" and min(image.size) >= 2 * draft:
            image.draft(image.mode, (draft, draft))
        image.load()
        if ("exif" in image.info or image.format == "TIFF") and \
                image.getexif().get(0x0112, 1) != 1:  # EXIF orientation
            image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise CorruptImageError(name, f"{type(e).__name__}: {e}") from None
    return image


# --------------------------------------------------------------------------- listings


def class_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a class folder name, or None when it can.

    Refused: empty, ``.``, ``..``, a path separator (``/`` or ``\\``) and control characters
    (a class name becomes a folder name on export and a label by name everywhere). Hidden
    names (a leading dot) are not classes: listings skip them with a note instead.
    """
    if name == "":
        return "an empty class name"
    if name in (".", ".."):
        return f"class name {name!r} is a path component"
    if "/" in name or "\\" in name:
        return f"class name {name!r} holds a path separator"
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        return f"class name {name!r} holds a control character"
    return None


@dataclasses.dataclass
class Listing:
    """One split's tree as found on disk or in a zip, before any decoding.

    ``entries``: class name -> sorted member names (files, or zip member names; may be
    empty for an empty class folder); ``ignored``: hidden or non-image names seen (skipped);
    ``bad_names``: class-name problems (one line each, naming the folder or zip member).
    """

    where: str
    split: str
    entries: dict[str, list[str]]
    ignored: list[str]
    bad_names: list[str]

    @property
    def class_names(self) -> list[str]:
        return sorted(self.entries)

    @property
    def empty(self) -> list[str]:
        return sorted(c for c, files in self.entries.items() if not files)


def assign_labels(
    entries: dict[str, list[str]],
    class_names: Sequence[str],
    *,
    where: str,
    split: str,
    reference: str = "train",
) -> tuple[list[str], np.ndarray]:
    """Files and labels of a split, labels BY NAME: ``class_names.index(folder name)``.

    The one place any split's labels come from. ``class_names`` is the reference order
    (the training split's, or a store's); a split whose class set differs is a
    :class:`DataSourceError` naming what it lacks and what it adds.
    """
    mine, ref = set(entries), set(class_names)
    if mine != ref:
        parts = []
        if ref - mine:
            parts.append("lacks class " + ", ".join(repr(c) for c in sorted(ref - mine)))
        if mine - ref:
            parts.append(f"has class {', '.join(repr(c) for c in sorted(mine - ref))} "
                         f"that {reference} lacks")
        raise DataSourceError(
            f"{split} split of {where} {' and '.join(parts)} ({reference} has "
            f"{', '.join(class_names)}); labels are matched by class name, so every split "
            "needs the same class folders")
    index = {name: k for k, name in enumerate(class_names)}
    files: list[str] = []
    labels: list[int] = []
    for name in sorted(entries):
        members = sorted(entries[name])
        files += members
        labels += [index[name]] * len(members)
    return files, np.asarray(labels, np.int32)


def _check_listing(listing: Listing) -> None:
    """The layout errors a source cannot open with (one line each)."""
    if listing.bad_names:
        raise DataSourceError(f"{listing.where}: {listing.bad_names[0]}"
                              + (f" (and {len(listing.bad_names) - 1} more)"
                                 if len(listing.bad_names) > 1 else ""))
    if listing.empty:
        raise DataSourceError(
            f"{listing.where}: split {listing.split!r} has empty class(es) {listing.empty}")
    if not listing.entries:
        raise DataSourceError(
            f"{listing.where}: split {listing.split!r} has no class folders with images")


def list_folder(root: str, split: str) -> Listing:
    """The ``<root>/.../<split>/<class>/<file>`` tree of a directory (see :class:`Listing`)."""
    split_dir = _find_split_dir(root, split)
    entries: dict[str, list[str]] = {}
    ignored: list[str] = []
    bad: list[str] = []
    for cls in sorted(os.listdir(split_dir)):
        d = os.path.join(split_dir, cls)
        if not os.path.isdir(d):
            ignored.append(d)
            continue
        if cls.startswith("."):
            ignored.append(d + "/")
            continue
        problem = class_name_problem(cls)
        if problem:
            bad.append(f"folder {d!r}: {problem}")
            continue
        files = []
        for f in sorted(os.listdir(d)):
            (files if _is_image_name(f) else ignored).append(os.path.join(d, f))
        entries[cls] = files
    return Listing(split_dir, split, entries, ignored, bad)


_ZIP_LISTINGS: dict[tuple[str, int, int], list[str]] = {}


def _zip_names(path: str) -> list[str]:
    """A zip's member names, cached per (path, size, mtime) so reference splits cost nothing."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _ZIP_LISTINGS:
        with zipfile.ZipFile(path) as zf:
            _ZIP_LISTINGS.clear()
            _ZIP_LISTINGS[key] = zf.namelist()
    return _ZIP_LISTINGS[key]


def list_zip(path: str, split: str) -> Listing:
    """The ``<prefix>/<split>/<class>/<file>`` tree inside a zip (the shallowest prefix)."""
    path = os.fspath(path)
    by_prefix: dict[str, dict[str, list[str]]] = {}
    ignored_by: dict[str, list[str]] = {}
    bad_by: dict[str, list[str]] = {}
    for name in _zip_names(path):
        parts = name.split("/")
        for k in range(len(parts) - 2):
            if parts[k] != split:
                continue
            prefix = "/".join(parts[:k])
            rest = parts[k + 1:]
            cls = rest[0]
            if len(rest) == 2 and rest[1] == "" and cls and not cls.startswith("."):
                by_prefix.setdefault(prefix, {}).setdefault(cls, [])  # a folder entry
                continue
            if len(rest) != 2:
                if rest[-1]:
                    ignored_by.setdefault(prefix, []).append(name)
                continue
            problem = class_name_problem(cls)
            if problem:
                bad_by.setdefault(prefix, []).append(f"zip member {name!r}: {problem}")
            elif cls.startswith(".") or not _is_image_name(rest[1]):
                ignored_by.setdefault(prefix, []).append(name)
            else:
                by_prefix.setdefault(prefix, {}).setdefault(cls, []).append(name)
    prefixes = set(by_prefix) | set(bad_by)
    if not prefixes:
        raise DataSourceError(f"{path}: no images under any '{split}/<class>/' folder")
    depth = min(p.count("/") + bool(p) for p in prefixes)
    best = [p for p in prefixes if p.count("/") + bool(p) == depth]
    if len(best) > 1:
        raise DataSourceError(f"{path}: several {split!r} splits: {sorted(best)}")
    prefix = best[0]
    where = f"{path}:{prefix + '/' if prefix else ''}{split}"
    entries = {c: sorted(f) for c, f in by_prefix.get(prefix, {}).items()}
    return Listing(where, split, entries, sorted(ignored_by.get(prefix, [])),
                   bad_by.get(prefix, []))


def list_split(path: str, split: str) -> Listing:
    """:func:`list_folder` or :func:`list_zip`, whichever ``path`` is."""
    if os.path.isfile(path) and zipfile.is_zipfile(path):
        return list_zip(path, split)
    return list_folder(path, split)


# --------------------------------------------------------------------------- backends


class _FolderBackend:
    def __init__(self, listing: Listing, class_names: Sequence[str], reference: str = "train"):
        _check_listing(listing)
        self.class_names = list(class_names)
        self.files, self.labels = assign_labels(
            listing.entries, self.class_names, where=listing.where, split=listing.split,
            reference=reference)

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

    def __init__(self, path: str, listing: Listing, class_names: Sequence[str],
                 reference: str = "train"):
        self.path = os.fspath(path)
        _check_listing(listing)
        self.class_names = list(class_names)
        self.files, self.labels = assign_labels(
            listing.entries, self.class_names, where=listing.where, split=listing.split,
            reference=reference)
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

    def image(self, i: int) -> np.ndarray:
        """Row ``i``'s image, never substituted: an unreadable file raises
        :class:`CorruptImageError` naming it whatever ``skip_corrupt`` says. Generation reads
        parents with it, so an image made "from" a file is made from that file."""
        try:
            return self._load(int(i) % len(self))
        except CorruptImageError as e:
            raise CorruptImageError(e.name, str(e).split(": ", 1)[-1] + "; an image made from "
                                    "it is never made from another one instead: fix or remove "
                                    "the file") from None

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


def _train_split(data_cfg: Any) -> str:
    return str(_get(data_cfg, "train_split", "train"))


def _reference_classes(path: str, split: str, train_split: str) -> list[str] | None:
    """The class names labels of ``split`` are matched against: the training split's
    (None when ``split`` is the training split, or when there is no training split)."""
    if split == train_split:
        return None
    try:
        return list_split(path, train_split).class_names
    except DataSourceError:
        return None


def open_real_source(
    data_cfg: Any,
    split: str,
    *,
    subset: bool | None = None,
    class_names: Sequence[str] | None = None,
    skip: Collection[str] = (),
) -> RealSource:
    """Open split ``split`` of the dataset ``data_cfg`` describes.

    ``data_cfg`` fields: ``path`` (image-folder directory or zip) or ``tfds_name`` (with
    optional ``tfds_data_dir``, ``tfds_image_key``, ``tfds_label_key``); ``image_size``,
    ``channels``, ``skip_corrupt``; subset fields ``per_class`` (0 = all),
    ``imbalance_factor`` (1 = balanced), ``subset_seed``, or ``first_per_class`` (the first n
    of each class; see :mod:`augdiff.data.subsets`).

    Labels are by class NAME (:func:`assign_labels`): against ``class_names`` when given (a
    store's order, say), else against the training split's (``data.train_split``) sorted
    class folders; a split whose class set differs is a :class:`DataSourceError`.
    ``skip``: file names (as :meth:`RealSource.name_of` gives them, e.g. the pre-scan's
    unreadable files) left out of the source before any subset is drawn.

    Subsets apply to the ``train`` split only unless ``subset`` says otherwise, so test
    accuracy is always measured on the full test split.
    """
    path = _get(data_cfg, "path", "")
    tfds_name = _get(data_cfg, "tfds_name", "")
    if path and tfds_name:
        raise DataSourceError("data: set either data.path or data.tfds_name, not both")
    if not path and not tfds_name:
        raise DataSourceError("data: set data.path (image folder or zip) or data.tfds_name")
    train_split = _train_split(data_cfg)
    if tfds_name:
        backend: Any = _TfdsBackend(
            tfds_name,
            split,
            _get(data_cfg, "tfds_data_dir", None) or None,
            _get(data_cfg, "tfds_image_key", "image"),
            _get(data_cfg, "tfds_label_key", "label"),
        )
        if class_names is not None and list(class_names) != backend.class_names:
            raise DataSourceError(
                f"tfds {tfds_name!r}: split {split!r} classes {backend.class_names} differ "
                f"from {list(class_names)}")
        description = f"tfds:{tfds_name}/{split}"
    else:
        path = os.path.expanduser(os.fspath(path))
        is_zip = os.path.isfile(path) and zipfile.is_zipfile(path)
        if not is_zip and not os.path.isdir(path):
            if os.path.exists(path):
                raise DataSourceError(f"data.path {path!r} is a file but not a zip archive")
            raise FileNotFoundError(
                f"data.path {path!r} does not exist: point --config.data.path at an image "
                "folder (root/<split>/<class>/*.png|jpg) or a zip of one, or use a TFDS "
                "dataset prepared in ArrayRecord format with --config.data.path= "
                "--config.data.tfds_name=cifar10")
        listing = list_split(path, split)
        reference = f"{train_split} split"
        if class_names is None:
            class_names = _reference_classes(path, split, train_split)
        else:
            reference = "the given class list"
        names = list(class_names) if class_names is not None else listing.class_names
        backend = (_ZipBackend(path, listing, names, reference) if is_zip
                   else _FolderBackend(listing, names, reference))
        description = f"{path}/{split}"
    keep = None
    if skip:
        skip = set(skip)
        keep = np.asarray([j for j in range(len(backend)) if backend.name(j) not in skip],
                          np.int64)
    labels = np.asarray(backend.labels) if keep is None else np.asarray(backend.labels)[keep]
    rows = keep
    if subset if subset is not None else split == train_split:
        picked = _select(
            labels,
            per_class=int(_get(data_cfg, "per_class", 0)),
            imbalance_factor=float(_get(data_cfg, "imbalance_factor", 1.0)),
            seed=int(_get(data_cfg, "subset_seed", 0)),
            num_classes=len(backend.class_names),
            class_names=list(backend.class_names),
            first=int(_get(data_cfg, "first_per_class", 0) or 0),
        )
        if picked is not None:
            rows = picked if keep is None else keep[picked]
    size = _get(data_cfg, "image_size", None)
    return RealSource(
        backend,
        image_size=int(size) if size else None,
        channels=int(_get(data_cfg, "channels", 3)),
        skip_corrupt=bool(_get(data_cfg, "skip_corrupt", False)),
        rows=rows,
        description=description,
    )


def _select(labels: np.ndarray, **kw: Any) -> np.ndarray | None:
    try:
        return subsets.select_subset(labels, **kw)
    except ValueError as e:
        raise DataSourceError(str(e)) from None


# --------------------------------------------------------------------------- pre-scan


MAX_SKIPPED_NAMES = 20


@dataclasses.dataclass
class ScanReport:
    """What :func:`prescan` found: every problem at once, and what it would skip.

    ``counts``: split -> class -> readable images; ``unreadable``: split -> [(file, reason)];
    ``ignored``: split -> hidden or non-image names; ``problems``: one line each, naming the
    file or class and the flag or fix; ``skip_corrupt``: whether unreadable files are skipped
    (then they are not problems).
    """

    where: str
    skip_corrupt: bool
    counts: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    unreadable: dict[str, list[tuple[str, str]]] = dataclasses.field(default_factory=dict)
    ignored: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    problems: list[str] = dataclasses.field(default_factory=list)
    scanned: int = 0
    seconds: float = 0.0

    def skipped(self, split: str) -> list[str]:
        """Unreadable files of ``split`` that sources should leave out (skip_corrupt only)."""
        return [n for n, _ in self.unreadable.get(split, [])] if self.skip_corrupt else []

    def skipped_images(self) -> dict[str, Any]:
        """The run record's ``skipped_images``: ``{split: count, ..., "files": [<= 20 names]}``."""
        out: dict[str, Any] = {split: len(self.skipped(split)) for split in self.counts}
        names = [n for split in self.counts for n in self.skipped(split)]
        out["files"] = names[:MAX_SKIPPED_NAMES]
        return out

    def lines(self) -> list[str]:
        """A human summary: counts per class, ignored files, skipped files, problems."""
        out = [f"data pre-scan of {self.where}: {self.scanned} images in {self.seconds:.1f} s"]
        for split, counts in self.counts.items():
            out.append(f"  {split}: {len(counts)} classes, {sum(counts.values())} readable: "
                       + ", ".join(f"{c} {n}" for c, n in counts.items()))
            if self.ignored.get(split):
                names = self.ignored[split]
                out.append(f"  {split}: ignored {len(names)} hidden or non-image entries: "
                           + ", ".join(names[:5]) + (" ..." if len(names) > 5 else ""))
            if self.skipped(split):
                out.append(f"  {split}: skipping {len(self.skipped(split))} unreadable "
                           "image(s) (data.skip_corrupt=True)")
        out += [f"  problem: {p}" for p in self.problems]
        return out

    def check(self) -> None:
        """Raise one :class:`DataSourceError` listing every problem (nothing when none)."""
        if self.problems:
            n = len(self.problems)
            raise DataSourceError(
                f"data pre-scan of {self.where} found {n} problem{'s' * (n > 1)}:\n"
                + "\n".join(f"  - {p}" for p in self.problems))


class _Reader:
    """Bytes of listed files: plain paths, or members of one zip opened once."""

    def __init__(self, path: str):
        self.zf = zipfile.ZipFile(path) if zipfile.is_zipfile(path) and os.path.isfile(path) \
            else None
        self.prefix = f"{path}:" if self.zf is not None else ""

    def read(self, name: str) -> bytes:
        if self.zf is not None:
            return self.zf.read(name)
        with open(name, "rb") as f:
            return f.read()

    def close(self) -> None:
        if self.zf is not None:
            self.zf.close()


def _check_file(reader: _Reader, name: str, channels: int) -> str | None:
    """None when ``name`` decodes (first frame, reduced JPEG scale) and converts, else why."""
    shown = reader.prefix + name
    try:
        data = reader.read(name)
        image = _decode(data, shown, draft=64)
        if image.mode not in ("RGB", "L"):  # those convert trivially; the others are tried
            to_uint8_image(image, None, channels)
    except CorruptImageError as e:
        return str(e).split(": ", 1)[-1]
    except (OSError, ValueError, zipfile.BadZipFile, KeyError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def prescan(data_cfg: Any, splits: Sequence[str] | None = None, *,
            progress: bool = True) -> ScanReport:
    """Look at every file of ``splits`` (default: ``data.train_split`` and
    ``data.test_split``) of the folder or zip ``data.path`` before anything is compiled.

    Reports every problem at once (:class:`ScanReport`): class-name problems, empty classes,
    splits whose classes differ from the training split's, unreadable or truncated images
    by name (unless ``data.skip_corrupt``, when they are skipped and counted), classes too
    small for ``data.per_class`` / ``data.imbalance_factor``; plus counts per class and the
    files ignored. Each image is fully read and decoded (JPEGs at a reduced DCT scale) with a
    tqdm progress bar. TFDS datasets are not scanned (an empty report).
    """
    path = _get(data_cfg, "path", "")
    train_split = _train_split(data_cfg)
    if splits is None:
        splits = [train_split, str(_get(data_cfg, "test_split", "test"))]
    skip_corrupt = bool(_get(data_cfg, "skip_corrupt", False))
    if not path or _get(data_cfg, "tfds_name", ""):
        return ScanReport(where=f"tfds:{_get(data_cfg, 'tfds_name', '')}",
                          skip_corrupt=skip_corrupt)
    path = os.path.expanduser(os.fspath(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"data.path {path!r} does not exist")
    report = ScanReport(where=path, skip_corrupt=skip_corrupt)
    listings: dict[str, Listing] = {}
    for split in dict.fromkeys(splits):
        try:
            listings[split] = list_split(path, split)
        except DataSourceError as e:
            report.problems.append(str(e))
    train_names = listings[train_split].class_names if train_split in listings else None
    for split, listing in listings.items():
        report.problems += [f"{b}: rename it or remove it" for b in listing.bad_names]
        for cls in listing.empty:
            report.problems.append(f"{split} split of {listing.where}: empty class {cls!r} "
                                   "(no images): add images or remove the folder")
        if train_names is not None and split != train_split:
            try:
                assign_labels(listing.entries, train_names, where=listing.where, split=split,
                              reference=f"{train_split} split")
            except DataSourceError as e:
                report.problems.append(str(e))
        report.ignored[split] = list(listing.ignored)
    from tqdm.auto import tqdm  # the bar only; imported here to keep module import light

    total = sum(len(f) for lst in listings.values() for f in lst.entries.values())
    channels = int(_get(data_cfg, "channels", 3))
    reader = _Reader(path)
    t0 = time.time()
    try:
        with tqdm(total=total, desc="data pre-scan", unit="img", disable=not progress,
                  dynamic_ncols=True) as bar:
            for split, listing in listings.items():
                counts, bad = {}, []
                for cls in listing.class_names:
                    ok = 0
                    for name in listing.entries[cls]:
                        reason = _check_file(reader, name, channels)
                        if reason is None:
                            ok += 1
                        else:
                            bad.append((reader.prefix + name, reason))
                        bar.update(1)
                    counts[cls] = ok
                report.counts[split], report.unreadable[split] = counts, bad
    finally:
        reader.close()
    report.scanned, report.seconds = total, time.time() - t0
    bad_all = [b for split in listings for b in report.unreadable[split]]
    if bad_all and not skip_corrupt:
        shown = "; ".join(f"{n} ({r})" for n, r in bad_all[:MAX_SKIPPED_NAMES])
        more = (f"; and {len(bad_all) - MAX_SKIPPED_NAMES} more"
                if len(bad_all) > MAX_SKIPPED_NAMES else "")
        report.problems.append(f"{len(bad_all)} unreadable image(s): {shown}{more}; set "
                               "data.skip_corrupt=True to skip them (counted in the run record)")
    if train_split in report.counts:
        counts = report.counts[train_split]
        names = list(counts)
        labels = np.repeat(np.arange(len(names)), [counts[c] for c in names])
        want = subsets.requested_counts(
            labels, per_class=int(_get(data_cfg, "per_class", 0)),
            imbalance_factor=float(_get(data_cfg, "imbalance_factor", 1.0)),
            num_classes=len(names)) if names else None
        if want is not None:
            report.problems += subsets.shortfalls(labels, want, names)
    return report
