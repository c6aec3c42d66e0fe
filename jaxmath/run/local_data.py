r"""Image classification datasets from the user's own files: IDX, CIFAR-10 batches, .npz, folders.

jaxmath downloads nothing: these loaders read data that are already on disk, in the
formats they are usually distributed in, and return them in one shape,
:class:`ImageDataset` (images ``[N, H, W, C]``, labels ``[N]`` int32), so an experiment
takes any of them through one field, ``config.data.path``:

==================  ======================================================================
format              what is at ``path``
==================  ======================================================================
``"idx"``           a directory with MNIST's (or Fashion-MNIST's) four IDX files,
                    ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
                    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each plain or
                    ``.gz``; ``train-images.idx3-ubyte`` spelling accepted too)
``"cifar10"``       a directory with CIFAR-10's python batches: ``data_batch_1`` ..
                    ``data_batch_<k>`` and ``test_batch`` (pickled dicts, ``b"data"`` uint8
                    ``[N, 3072]`` in CHW order and ``b"labels"``), ``batches.meta`` optional
``"npz"``           a ``.npz`` file with ``x_train, y_train, x_test, y_test``, or ``x, y``
                    (split here), and optionally ``class_names``
``"image_folder"``  a directory ``root/<class>/*.png|jpg|jpeg|bmp``, or ``root/train/<class>``
                    and ``root/test/<class>``; class index = position of the class folder's
                    name in sorted order
==================  ======================================================================

``format="auto"`` picks the format from what is at ``path`` (:func:`detect_format`).
Images keep the dtype they are stored in (uint8 for IDX, CIFAR-10 and image files);
:func:`scale_to_unit` maps them to float32 in [0, 1]. Every inconsistency is found at
load time, before any training, as a ValueError that names the file(s), what was found
and what is accepted: counts of images and labels that differ, train and test images of
different shapes, labels that are not integers or fall outside ``0 .. K-1``, images of
mixed sizes in a folder, empty folders, a path in no known format.

CIFAR-10's batches are pickles; they are read by an unpickler that builds nothing but
plain containers, strings, numbers and NumPy arrays (:class:`_SafeUnpickler`), so a
file from elsewhere cannot run code on load.
"""

from __future__ import annotations

import gzip
import pickle
import re
import struct
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np

__all__ = [
    "FORMATS",
    "ImageDataset",
    "detect_format",
    "load_cifar10",
    "load_dataset",
    "load_idx",
    "load_image_folder",
    "load_npz",
    "read_idx",
    "scale_to_unit",
    "stratified_split",
]

FORMATS = ("idx", "cifar10", "npz", "image_folder")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
IDX_FILES = {  # role -> accepted base names (each plain or .gz)
    "train_images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}
# IDX type codes (the third byte of the magic number) -> big-endian NumPy dtypes
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
CIFAR_SIDE = 32
_MAX_LISTED = 6


class ImageDataset(NamedTuple):
    """A train/test split of labelled images, whatever file format it came from."""

    x_train: np.ndarray  # [N, H, W, C], uint8 (values 0..255) or float (values in [0, 1])
    y_train: np.ndarray  # [N] int32 in 0 .. num_classes - 1
    x_test: np.ndarray   # [M, H, W, C], same H, W, C and dtype kind as x_train
    y_test: np.ndarray   # [M] int32
    num_classes: int
    class_names: tuple[str, ...]  # num_classes names, "0", "1", ... when the files hold none
    format: str          # one of FORMATS (or the caller's own name for other sources)


# ------------------------------------------------------------------------------ helpers


def _listing(names: Sequence[str]) -> str:
    names = sorted(names)
    shown = ", ".join(names[:_MAX_LISTED])
    return f"[{shown}{', ...' if len(names) > _MAX_LISTED else ''}]" if names else "nothing"


def _check_path(path: Any, name: str = "path") -> Path:
    if not isinstance(path, str | Path):
        raise TypeError(f"{name} must be a str or pathlib.Path, got {type(path).__name__}")
    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(f"{name} {str(path)!r} does not exist")
    return p


def _check_fraction(test_fraction: float) -> float:
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, int | float) \
            or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be a float in (0, 1), got {test_fraction!r}")
    return float(test_fraction)


def _as_images(x: Any, source: str) -> np.ndarray:
    """``[N, H, W]`` or ``[N, H, W, C]`` numbers -> ``[N, H, W, C]``, values checked."""
    x = np.asarray(x)
    if x.dtype.kind not in "uif" and x.dtype != np.bool_:
        raise ValueError(f"{source}: images must be numbers, got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"{source}: images must be [N, H, W] or [N, H, W, C], got shape "
                         f"{x.shape}")
    if x.shape[0] == 0 or 0 in x.shape[1:]:
        raise ValueError(f"{source}: no images (shape {x.shape})")
    if not 1 <= x.shape[-1] <= 4:
        hint = (" (it looks channels-first: transpose it to [N, H, W, C])"
                if x.shape[1] in (1, 3, 4) else "")
        raise ValueError(f"{source}: images must have 1 to 4 channels last, [N, H, W, C], got "
                         f"shape {x.shape}{hint}")
    if x.dtype == np.bool_:
        x = x.astype(np.uint8) * 255
    if x.dtype.kind in "iu":
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"{source}: integer images must hold values in 0..255, found "
                             f"{lo}..{hi}")
    else:
        lo, hi = float(x.min()), float(x.max())
        if not (np.isfinite(lo) and np.isfinite(hi) and lo >= 0 and hi <= 1):
            raise ValueError(f"{source}: float images must hold values in [0, 1], found "
                             f"[{lo:g}, {hi:g}]; store them as uint8 0..255 or divide by "
                             "their maximum")
    return x


def _as_labels(y: Any, source: str) -> np.ndarray:
    """``[N]`` integer-valued labels >= 0 -> int32."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{source}: labels must be a 1-D array of class indices [N], got "
                         f"shape {y.shape}")
    if y.dtype.kind == "f":
        bad = y[~(np.isfinite(y) & (y == np.round(y)))]
        if bad.size:
            raise ValueError(f"{source}: labels must be integers 0..K-1, found the "
                             f"non-integer value {bad[0].item()!r} (dtype {y.dtype})")
    elif y.dtype.kind not in "iu":
        raise ValueError(f"{source}: labels must be integers 0..K-1, got dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise ValueError(f"{source}: labels must be integers 0..K-1, found {y.min():g}")
    if y.size and y.max() >= 2**31:
        raise ValueError(f"{source}: labels must be integers 0..K-1, found {y.max():g}")
    return y.astype(np.int32)


def _finish(fmt: str, x_train: Any, y_train: Any, x_test: Any, y_test: Any,
            sources: Sequence[str], class_names: Sequence[str] | None = None) -> ImageDataset:
    """The checks every format shares; ``sources`` names the four arrays' origins."""
    src_xtr, src_ytr, src_xte, src_yte = sources
    x_train, x_test = _as_images(x_train, src_xtr), _as_images(x_test, src_xte)
    y_train, y_test = _as_labels(y_train, src_ytr), _as_labels(y_test, src_yte)
    for x, y, sx, sy in ((x_train, y_train, src_xtr, src_ytr), (x_test, y_test, src_xte,
                                                                src_yte)):
        if len(x) != len(y):
            raise ValueError(f"{sx} holds {len(x)} images but {sy} holds {len(y)} labels; "
                             "each image needs exactly one label")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(f"train and test images must share one shape [H, W, C]: {src_xtr} "
                         f"holds {x_train.shape[1:]}, {src_xte} holds {x_test.shape[1:]}")
    if (x_train.dtype.kind == "f") != (x_test.dtype.kind == "f"):
        raise ValueError(f"train and test images must both be integers 0..255 or both floats "
                         f"in [0, 1]: {src_xtr} is {x_train.dtype}, {src_xte} is "
                         f"{x_test.dtype}")
    top = int(max(y_train.max(), y_test.max()))
    if class_names is None:
        class_names = tuple(str(k) for k in range(top + 1))
    class_names = tuple(str(c) for c in class_names)
    if top >= len(class_names):
        where = src_ytr if y_train.max() == top else src_yte
        raise ValueError(f"{where}: labels must be in 0..{len(class_names) - 1} (one per class "
                         f"name), found {top}")
    return ImageDataset(x_train, y_train, x_test, y_test, len(class_names), class_names, fmt)


def stratified_split(labels: Any, test_fraction: float = 0.25,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    r"""Indices of a train/test split that keeps each class's share.

    Of the :math:`n_k` examples of class :math:`k`, :math:`\min(\mathrm{round}(f\,n_k),
    n_k - 1)` go to the test split (:math:`f` = ``test_fraction``; so every class keeps a
    training example), chosen by a permutation from ``numpy.random.default_rng(seed)``;
    both index arrays are sorted, so each split keeps the original order.

    Args:
      labels: ``[N]`` integer class labels.
      test_fraction: :math:`f \in (0, 1)`.
      seed: the permutation's seed.

    Returns:
      ``(train_idx, test_idx)``, disjoint int64 arrays whose union is ``0 .. N-1``.

    Example:
      >>> train, test = stratified_split(np.array([0, 0, 0, 0, 1, 1, 1, 1]), 0.5)
      >>> len(train), len(test), sorted(np.r_[train, test]) == list(range(8))
      (4, 4, True)
    """
    labels = _as_labels(labels, "labels")
    f = _check_fraction(test_fraction)
    rng = np.random.default_rng(seed)
    test = []
    for k in np.unique(labels):
        members = np.flatnonzero(labels == k)
        count = min(round(f * len(members)), len(members) - 1)
        test.append(rng.permutation(members)[:count])
    test_idx = np.sort(np.concatenate(test)) if test else np.zeros(0, np.int64)
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return train_idx, test_idx


def _split(labels: np.ndarray, test_fraction: float, seed: int,
           source: str) -> tuple[np.ndarray, np.ndarray]:
    train, test = stratified_split(labels, test_fraction, seed)
    if len(test) == 0:
        raise ValueError(f"{source}: holding out test_fraction={test_fraction} of each class of "
                         f"{np.bincount(labels).tolist()} images leaves no test images; give "
                         "classes at least 2 images, a larger test_fraction, or a test split")
    return train, test


def scale_to_unit(images: Any) -> np.ndarray:
    r"""Images as float32 in [0, 1]: integers divided by 255, floats as they are.

    .. math:: x_{[0,1]} = x / 255 \ (\text{integer images, values } 0..255), \qquad
       x_{[0,1]} = x \ (\text{float images, already in } [0, 1])

    The loaders of this module accept only those two kinds, so the result is always
    in [0, 1]; map it on to a model's own range there (``2 x - 1`` for [-1, 1]).

    Example:
      >>> scale_to_unit(np.array([[0, 51, 255]], np.uint8))
      array([[0. , 0.2, 1. ]], dtype=float32)
    """
    x = np.asarray(images)
    if x.dtype.kind in "iub":
        return (x.astype(np.float32) / np.float32(255))
    if x.dtype.kind == "f":
        return x.astype(np.float32)
    raise TypeError(f"images must be integers (0..255) or floats (in [0, 1]), got dtype "
                    f"{x.dtype}")


# ----------------------------------------------------------------------- format detection


def _find_idx(root: Path) -> dict[str, Path | None]:
    found: dict[str, Path | None] = {}
    for role, names in IDX_FILES.items():
        found[role] = next((root / (n + gz) for n in names for gz in ("", ".gz")
                            if (root / (n + gz)).is_file()), None)
    return found


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_SUFFIXES)


def detect_format(path: str | Path) -> str:
    """The format of the dataset at ``path``: one of :data:`FORMATS`.

    A ``.npz`` file (or any zip of ``.npy`` arrays) is ``"npz"``; a directory is
    ``"idx"`` if it holds ``train-images-idx3-ubyte[.gz]``, ``"cifar10"`` if it holds
    ``data_batch_1`` or ``test_batch``, and ``"image_folder"`` if it has sub-folders
    (classes, or ``train``/``test``) with image files in them.

    Raises:
      ValueError: ``path`` does not exist or is in none of these formats; the message
        lists what was found there.

    Example:
      >>> import tempfile
      >>> with tempfile.TemporaryDirectory() as d:
      ...     np.savez(f"{d}/a.npz", x=np.zeros((2, 4, 4), np.uint8), y=np.arange(2))
      ...     detect_format(f"{d}/a.npz")
      'npz'
    """
    p = _check_path(path)
    accepted = ("accepted: a .npz file (x_train/y_train/x_test/y_test or x/y), or a directory "
                "with the MNIST IDX files (train-images-idx3-ubyte[.gz], ...), the CIFAR-10 "
                "python batches (data_batch_1, ..., test_batch), or class folders of images "
                f"(<class>/*{'|'.join(IMAGE_SUFFIXES)}, optionally under train/ and test/)")
    if p.is_file():
        if p.suffix.lower() == ".npz" or zipfile.is_zipfile(p):
            return "npz"
        raise ValueError(f"path {str(path)!r} is a file in no known format; {accepted}")
    if _find_idx(p)["train_images"] is not None:
        return "idx"
    if (p / "data_batch_1").is_file() or (p / "test_batch").is_file():
        return "cifar10"
    dirs = _class_dirs(p)
    if any(_image_files(d) for d in dirs) or any(
            _image_files(c) for d in dirs if d.name in ("train", "test") for c in _class_dirs(d)):
        return "image_folder"
    entries = [e.name + ("/" if e.is_dir() else "") for e in p.iterdir()]
    raise ValueError(f"path {str(path)!r} holds no dataset in a known format (found "
                     f"{_listing(entries)}); {accepted}")


def load_dataset(path: str | Path, format: str = "auto", *, test_fraction: float = 0.25,
                 seed: int = 0) -> ImageDataset:
    """Load the image dataset at ``path``, in ``format`` (``"auto"``: :func:`detect_format`).

    Args:
      path: a file or directory, as the table of the module docstring describes.
      format: ``"auto"`` or one of :data:`FORMATS`.
      test_fraction: for data without a test split of their own (``.npz`` with ``x, y``,
        an image folder without ``train/`` and ``test/``): the share of each class held
        out (:func:`stratified_split`).
      seed: that split's seed.

    Returns:
      An :class:`ImageDataset`; its images as stored (see :func:`scale_to_unit`).

    Raises:
      ValueError: an unknown format, a path in no known format, or files that disagree
        (counts, shapes, labels); the message names the files and what is accepted.

    Example:
      >>> import tempfile
      >>> with tempfile.TemporaryDirectory() as d:
      ...     x = np.arange(8 * 4 * 4, dtype=np.uint8).reshape(8, 4, 4)
      ...     np.savez(f"{d}/a.npz", x=x, y=np.array([0, 1] * 4))
      ...     data = load_dataset(f"{d}/a.npz", test_fraction=0.5)
      >>> data.x_train.shape, data.x_test.shape, data.num_classes, data.format
      ((4, 4, 4, 1), (4, 4, 4, 1), 2, 'npz')
    """
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"format must be 'auto' or one of {FORMATS}, got {format!r}")
    fmt = detect_format(path) if format == "auto" else format
    if fmt == "idx":
        return load_idx(path)
    if fmt == "cifar10":
        return load_cifar10(path)
    if fmt == "npz":
        return load_npz(path, test_fraction=test_fraction, seed=seed)
    return load_image_folder(path, test_fraction=test_fraction, seed=seed)


# ------------------------------------------------------------------------------------ IDX


def read_idx(file: str | Path) -> np.ndarray:
    r"""The array in one IDX file (plain, or gzip-compressed if its name ends in ``.gz``).

    The IDX format (LeCun et al., MNIST): a 4-byte magic number ``00 00 TT DD``, where
    ``TT`` is the type code (``08`` uint8, ``09`` int8, ``0B`` int16, ``0C`` int32, ``0D``
    float32, ``0E`` float64) and ``DD`` the number of dimensions; then ``DD`` big-endian
    uint32 sizes; then the :math:`\prod` sizes values, big-endian, row-major.

    Raises:
      ValueError: a bad magic number, unknown type code, or a length that does not match
        the header's sizes (a truncated file, or bytes after the data).

    Example:
      >>> import struct, tempfile
      >>> with tempfile.TemporaryDirectory() as d:
      ...     header = struct.pack(">4B2I", 0, 0, 0x08, 2, 2, 3)  # uint8, shape (2, 3)
      ...     _ = open(f"{d}/f", "wb").write(header + bytes(range(6)))
      ...     read_idx(f"{d}/f")
      array([[0, 1, 2],
             [3, 4, 5]], dtype=uint8)
    """
    p = _check_path(file, "file")
    try:
        raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{p.name}: not a readable gzip file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{p.name}: not an IDX file (its magic number must start with two "
                         f"zero bytes, found {raw[:4].hex(' ') or 'an empty file'})")
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        raise ValueError(f"{p.name}: unknown IDX type code 0x{code:02X}; accepted: "
                         f"{', '.join(f'0x{c:02X}' for c in IDX_DTYPES)}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{p.name}: IDX header declares {ndim} dimensions but the file ends "
                         f"after {len(raw)} bytes")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(IDX_DTYPES[code])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{p.name}: IDX header says shape {dims} of {dtype.name} "
                         f"({expected} bytes with the header) but the file holds {len(raw)} "
                         "bytes")
    data = np.frombuffer(raw, dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))


def load_idx(path: str | Path) -> ImageDataset:
    """MNIST or Fashion-MNIST from the directory of its four IDX files.

    Images ``[N, 28, 28]`` uint8 become ``[N, 28, 28, 1]``; labels are ``[N]`` uint8 class
    indices; class names ``"0" .. "K-1"`` (the files hold none).

    Raises:
      ValueError: a missing file (all four are listed), a file that is not IDX, image
        files that are not ``[N, H, W]``, label files that are not ``[N]``, or the common
        checks (counts, shapes, labels).
    """
    root = _check_path(path)
    if not root.is_dir():
        raise ValueError(f"path {str(path)!r} must be a directory holding the four IDX files "
                         f"{[names[0] for names in IDX_FILES.values()]}")
    found = _find_idx(root)
    missing = [IDX_FILES[role][0] for role, f in found.items() if f is None]
    if missing:
        raise ValueError(f"{root}: missing IDX file(s) {missing} (plain or .gz); an IDX "
                         f"dataset needs all of {[n[0] for n in IDX_FILES.values()]}")
    arrays = {role: read_idx(f) for role, f in found.items()}
    for role, want in (("train_images", 3), ("test_images", 3), ("train_labels", 1),
                       ("test_labels", 1)):
        if arrays[role].ndim != want:
            kind = "images [N, rows, cols]" if want == 3 else "labels [N]"
            raise ValueError(f"{found[role].name}: an IDX file of {kind} must have {want} "
                             f"dimension(s), got shape {arrays[role].shape}")
    names = [found[r].name for r in ("train_images", "train_labels", "test_images",
                                     "test_labels")]
    return _finish("idx", arrays["train_images"], arrays["train_labels"],
                   arrays["test_images"], arrays["test_labels"], names)


# -------------------------------------------------------------------------------- CIFAR-10


def _numpy_attr(modules: Sequence[str], name: str) -> Any:
    import importlib

    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"numpy has no {name}")


class _SafeUnpickler(pickle.Unpickler):
    """Builds plain Python values and NumPy arrays only; any other global is refused."""

    ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset({
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module == "_codecs":
            import codecs

            return codecs.encode
        if name in ("ndarray", "dtype"):
            return getattr(np, name)
        if name == "_frombuffer":  # protocol 5 pickles of arrays
            return _numpy_attr(("numpy._core.numeric", "numpy.core.numeric"), name)
        return _numpy_attr(("numpy._core.multiarray", "numpy.core.multiarray"), name)


def _read_pickle(file: Path) -> dict:
    try:
        with file.open("rb") as f:
            obj = _SafeUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError) as e:
        raise ValueError(f"{file.name}: not a CIFAR-10 python batch (a pickled dict of arrays "
                         f"and lists): {e}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{file.name}: a CIFAR-10 batch must be a pickled dict, got "
                         f"{type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _cifar_batch(file: Path) -> tuple[np.ndarray, Any]:
    batch = _read_pickle(file)
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"{file.name}: a CIFAR-10 batch needs the keys b'data' and b'labels', "
                         f"found {_listing(list(batch))}")
    data = np.asarray(batch["data"])
    pixels = 3 * CIFAR_SIDE * CIFAR_SIDE
    if data.ndim != 2 or data.shape[1] != pixels or data.dtype != np.uint8:
        raise ValueError(f"{file.name}: b'data' must be uint8 [N, {pixels}] (3x32x32, channels "
                         f"first), got {data.dtype} {data.shape}")
    images = data.reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), batch["labels"]


def load_cifar10(path: str | Path) -> ImageDataset:
    """CIFAR-10 from its python batches: ``data_batch_1 .. data_batch_k`` and ``test_batch``.

    Each batch is a pickled dict with ``b"data"``, uint8 ``[N, 3072]`` (the red, green
    and blue 32x32 planes of each image, row-major), and ``b"labels"``, a list of ``N``
    ints; images come back ``[N, 32, 32, 3]`` (HWC). The training batches are
    concatenated in the order 1..k (k = 5 in the real data; any consecutive run from 1 is
    accepted). ``batches.meta``, if present, supplies ``b"label_names"``.

    Raises:
      ValueError: a missing ``data_batch_1`` or ``test_batch``, a gap in the batch numbers,
        a file that is not such a pickle (or that would build anything but plain values
        and arrays), or the common checks.
    """
    root = _check_path(path)
    if not root.is_dir():
        raise ValueError(f"path {str(path)!r} must be a directory holding data_batch_1, ... "
                         "and test_batch")
    numbers = sorted(int(m.group(1)) for f in root.iterdir()
                     if (m := re.fullmatch(r"data_batch_(\d+)", f.name)))
    if not numbers or not (root / "test_batch").is_file():
        missing = [n for n, ok in (("data_batch_1", bool(numbers)),
                                   ("test_batch", (root / "test_batch").is_file())) if not ok]
        raise ValueError(f"{root}: missing CIFAR-10 batch file(s) {missing}; expected "
                         "data_batch_1 .. data_batch_5 and test_batch")
    if numbers != list(range(1, len(numbers) + 1)):
        raise ValueError(f"{root}: the training batches must be data_batch_1 .. data_batch_k "
                         f"without gaps, found numbers {numbers}")
    train = [_cifar_batch(root / f"data_batch_{k}") for k in numbers]
    x_test, y_test = _cifar_batch(root / "test_batch")
    names = None
    meta_file = root / "batches.meta"
    if meta_file.is_file():
        meta = _read_pickle(meta_file)
        if "label_names" in meta:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta["label_names"]]
    train_files = ("data_batch_1" if len(numbers) == 1
                   else f"data_batch_1..data_batch_{numbers[-1]}")
    try:
        y_train = np.concatenate([np.asarray(y) for _, y in train])
    except ValueError as e:
        raise ValueError(f"{train_files}: b'labels' must be lists of class indices: {e}") \
            from None
    return _finish("cifar10", np.concatenate([x for x, _ in train]), y_train, x_test, y_test,
                   [f"{train_files} (b'data')", f"{train_files} (b'labels')",
                    "test_batch (b'data')", "test_batch (b'labels')"], names)


# ------------------------------------------------------------------------------------ npz


def load_npz(path: str | Path, *, test_fraction: float = 0.25, seed: int = 0) -> ImageDataset:
    """Images and labels from a ``.npz`` file (``numpy.savez``), read without pickle.

    The keys ``x_train, y_train, x_test, y_test`` give the split as it is; ``x, y`` are
    split by :func:`stratified_split` (``test_fraction``, ``seed``). Images are ``[N, H,
    W]`` or ``[N, H, W, C]``, integers 0..255 or floats in [0, 1]; labels ``[N]`` integers.
    An optional ``class_names`` array of strings names the classes. Other keys are ignored.

    Raises:
      ValueError: neither key set complete, or the common checks.
    """
    p = _check_path(path)
    try:
        with np.load(p, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"{p.name}: not a readable .npz file of plain arrays ({e})") from None
    names = arrays.get("class_names")
    if names is not None:
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise ValueError(f"{p.name}: class_names must be a 1-D array of strings, got "
                             f"{names.dtype} {names.shape}")
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist()]
    split = ("x_train", "y_train", "x_test", "y_test")
    if all(k in arrays for k in split):
        return _finish("npz", *(arrays[k] for k in split), [f"{p.name}[{k}]" for k in split],
                       names)
    if "x" in arrays and "y" in arrays:
        x, y = _as_images(arrays["x"], f"{p.name}[x]"), _as_labels(arrays["y"], f"{p.name}[y]")
        if len(x) != len(y):
            raise ValueError(f"{p.name}[x] holds {len(x)} images but {p.name}[y] holds {len(y)} "
                             "labels; each image needs exactly one label")
        train, test = _split(y, test_fraction, seed, p.name)
        return _finish("npz", x[train], y[train], x[test], y[test],
                       [f"{p.name}[x]", f"{p.name}[y]"] * 2, names)
    raise ValueError(f"{p.name}: expected the arrays x_train, y_train, x_test, y_test (or x and "
                     f"y), found {_listing(list(arrays))}")


# --------------------------------------------------------------------------- image folder


_GREY_MODES, _COLOUR_MODES = ("1", "L", "LA"), ("P", "PA", "RGB", "RGBA", "CMYK", "YCbCr")


def _read_folder(root: Path, classes: Sequence[str]) -> tuple[list[np.ndarray], list[int],
                                                               list[Path]]:
    from PIL import Image, UnidentifiedImageError

    images, labels, files = [], [], []
    for k, name in enumerate(classes):
        folder = root / name
        paths = _image_files(folder)
        if not paths:
            raise ValueError(f"class folder {folder} holds no images "
                             f"({'|'.join(IMAGE_SUFFIXES)}); every class needs at least one")
        for f in paths:
            try:
                with Image.open(f) as im:
                    if im.mode not in _GREY_MODES + _COLOUR_MODES:
                        raise ValueError(f"{f}: image mode {im.mode!r} is not supported; "
                                         "accepted: 8-bit grey or colour "
                                         f"{_GREY_MODES + _COLOUR_MODES}")
                    grey = im.mode in _GREY_MODES
                    images.append(np.asarray(im.convert("L" if grey else "RGB")))
            except (UnidentifiedImageError, OSError) as e:
                raise ValueError(f"{f}: not a readable image ({e})") from None
            labels.append(k)
            files.append(f)
    return images, labels, files


def _stack(images: list[np.ndarray], files: list[Path], colour: bool) -> np.ndarray:
    sizes = {im.shape[:2] for im in images}
    if len(sizes) > 1:
        first = files[0]
        other = next(f for im, f in zip(images, files, strict=True)
                     if im.shape[:2] != images[0].shape[:2])
        h0, w0 = images[0].shape[:2]
        h1, w1 = images[files.index(other)].shape[:2]
        raise ValueError(f"images of mixed sizes: {first} is {h0}x{w0} (HxW) but {other} is "
                         f"{h1}x{w1}; every image of a dataset must have the same size (found "
                         f"{len(sizes)} sizes)")
    if colour:
        images = [np.repeat(im[..., None], 3, -1) if im.ndim == 2 else im for im in images]
    else:
        images = [im[..., None] for im in images]
    return np.stack(images)


def load_image_folder(path: str | Path, *, test_fraction: float = 0.25,
                      seed: int = 0) -> ImageDataset:
    """Labelled images from class folders: ``root/<class>/*.png`` (also jpg, jpeg, bmp).

    The class names are the folder names, sorted; class ``k`` is the ``k``-th. With
    ``root/train/<class>`` and ``root/test/<class>`` the split is the folders'; the test
    classes must be among the training classes. Otherwise each class is split by
    :func:`stratified_split` (``test_fraction``, ``seed``). Images are read with Pillow:
    grey ones (modes 1, L, LA) as ``[H, W, 1]``, colour ones (P, RGB, RGBA, CMYK, ...)
    as ``[H, W, 3]`` RGB, alpha dropped; if any image is in colour, grey images are
    repeated to 3 channels. All are uint8 and must share one size. Files with other
    suffixes, hidden files and hidden folders are skipped.

    Raises:
      ValueError: no class folders, an empty class folder, an unreadable image, images of
        mixed sizes, test classes unknown to the training split.
    """
    root = _check_path(path)
    if not root.is_dir():
        raise ValueError(f"path {str(path)!r} must be a directory of class folders")
    dirs = [d.name for d in _class_dirs(root)]
    split_layout = "train" in dirs and "test" in dirs
    if split_layout:
        train_root, test_root = root / "train", root / "test"
        classes = [d.name for d in _class_dirs(train_root)]
        test_classes = [d.name for d in _class_dirs(test_root)]
        unknown = sorted(set(test_classes) - set(classes))
        if unknown:
            raise ValueError(f"{test_root}: class folders {unknown} are not among the training "
                             f"classes {_listing(classes)} in {train_root}")
    else:
        train_root, classes = root, dirs
    if not classes:
        raise ValueError(f"{train_root} holds no class folders; expected <class>/*"
                         f"{'|'.join(IMAGE_SUFFIXES)} (optionally under train/ and test/)")
    images, labels, files = _read_folder(train_root, classes)
    if split_layout:
        test_images, test_labels, test_files = _read_folder(test_root, [
            c for c in classes if c in test_classes])
        index = {c: k for k, c in enumerate(classes)}
        order = [c for c in classes if c in test_classes]
        test_labels = [index[order[k]] for k in test_labels]
        colour = any(im.ndim == 3 for im in images + test_images)
        x = _stack(images + test_images, files + test_files, colour)
        x_train, x_test = x[:len(images)], x[len(images):]
        y_train, y_test = np.array(labels), np.array(test_labels)
        sources = [str(train_root), str(train_root), str(test_root), str(test_root)]
    else:
        x = _stack(images, files, any(im.ndim == 3 for im in images))
        y = np.array(labels)
        train, test = _split(y, test_fraction, seed, str(root))
        x_train, y_train, x_test, y_test = x[train], y[train], x[test], y[test]
        sources = [str(root)] * 4
    return _finish("image_folder", x_train, y_train, x_test, y_test, sources, classes)
