"""jaxmath.run.local_data: datasets from the user's files, each format written here and read back.

The writers below produce each format as it is distributed (IDX per LeCun's spec with
``struct``, CIFAR-10's pickled dicts with bytes keys, ``numpy.savez``, PNG class folders);
the experiments' tests use them too.
"""

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxmath.run.local_data import (
    FORMATS,
    ImageDataset,
    detect_format,
    load_dataset,
    read_idx,
    scale_to_unit,
    stratified_split,
)

IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
             np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}
CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck"]


# ------------------------------------------------------------------------------ writers


def write_idx(file: Path, array: np.ndarray, code: int | None = None) -> Path:
    """``array`` as an IDX file: magic 00 00 <type> <ndim>, big-endian sizes and values."""
    array = np.asarray(array)
    code = IDX_CODES[array.dtype] if code is None else code
    raw = (struct.pack(">4B", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
           + array.astype(array.dtype.newbyteorder(">")).tobytes())
    file.write_bytes(gzip.compress(raw) if file.suffix == ".gz" else raw)
    return file


def random_split(rng, n_train=40, n_test=20, shape=(28, 28), classes=10, dtype=np.uint8):
    """Random images and labels in which every class occurs in both splits."""
    def images(n):
        if np.dtype(dtype).kind == "f":
            return rng.uniform(size=(n, *shape)).astype(dtype)
        return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8).astype(dtype)

    def labels(n):
        return rng.permutation(np.arange(n) % classes).astype(np.uint8)

    return images(n_train), labels(n_train), images(n_test), labels(n_test)


def write_mnist(root: Path, rng, gz: bool = False, **kwargs) -> tuple[np.ndarray, ...]:
    """The four MNIST IDX files of a random split in ``root``; returns the split."""
    root.mkdir(parents=True, exist_ok=True)
    arrays = random_split(rng, **kwargs)
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
    for name, array in zip(names, arrays, strict=True):
        write_idx(root / (name + (".gz" if gz else "")), array)
    return arrays


def write_cifar(root: Path, rng, batches: int = 2, per_batch: int = 15, n_test: int = 15,
                meta: bool = True, protocol: int = 2) -> tuple[np.ndarray, ...]:
    """CIFAR-10 python batches (pickled dicts, bytes keys, CHW rows) of random HWC images;
    the real files are protocol-2 pickles."""
    root.mkdir(parents=True, exist_ok=True)
    n_train = batches * per_batch
    x_tr, y_tr, x_te, y_te = random_split(rng, n_train, n_test, shape=(32, 32, 3))

    def dump(name, x, y, label):
        rows = x.transpose(0, 3, 1, 2).reshape(len(x), 3072)  # R, G, B planes, row-major
        batch = {b"batch_label": label, b"labels": [int(v) for v in y], b"data": rows,
                 b"filenames": [f"img_{i}.png".encode() for i in range(len(x))]}
        with (root / name).open("wb") as f:
            pickle.dump(batch, f, protocol=protocol)

    for k in range(batches):
        part = slice(k * per_batch, (k + 1) * per_batch)
        dump(f"data_batch_{k + 1}", x_tr[part], y_tr[part], f"training batch {k + 1}".encode())
    dump("test_batch", x_te, y_te, b"testing batch 1 of 1")
    if meta:
        with (root / "batches.meta").open("wb") as f:
            pickle.dump({b"num_cases_per_batch": per_batch, b"num_vis": 3072,
                         b"label_names": [n.encode() for n in CIFAR_NAMES]}, f, protocol=2)
    return x_tr, y_tr, x_te, y_te


def write_png_folder(root: Path, images: np.ndarray, labels: np.ndarray,
                     names: list[str]) -> None:
    """``root/<names[label]>/<i>.png`` for each ``[H, W]`` or ``[H, W, 3]`` uint8 image."""
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:04d}.png")


def png_folder(root: Path, rng, n: int = 30, shape=(8, 8), classes=("a", "b", "c")):
    """A class-folder dataset of ``n`` random images; returns them in folder order."""
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    y = np.arange(n) % len(classes)
    write_png_folder(root, x, y, list(classes))
    order = np.argsort(y, kind="stable")  # the loader reads class by class, files sorted
    return x[order], y[order]


def assert_dataset_equal(data: ImageDataset, x_tr, y_tr, x_te, y_te) -> None:
    for got, want in ((data.x_train, x_tr), (data.x_test, x_te)):
        want = np.asarray(want)
        want = want[..., None] if want.ndim == 3 else want
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    for got, want in ((data.y_train, y_tr), (data.y_test, y_te)):
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------- the formats


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_files_load_back_exactly(tmp_path, rng, gz):
    arrays = write_mnist(tmp_path, rng, gz=gz)
    data = load_dataset(tmp_path)
    assert data.format == "idx" and detect_format(tmp_path) == "idx"
    assert_dataset_equal(data, *arrays)
    assert data.x_train.shape == (40, 28, 28, 1)
    assert data.num_classes == 10 and data.class_names == tuple(str(k) for k in range(10))
    assert_dataset_equal(load_dataset(tmp_path, "idx"), *arrays)


@pytest.mark.parametrize("dtype, shape", [(np.uint8, (3, 4)), (np.int8, (5,)),
                                          (np.int16, (2, 3, 2)), (np.int32, (4,)),
                                          (np.float32, (2, 2)), (np.float64, (3, 1, 2))])
def test_read_idx_parses_every_type_code(tmp_path, rng, dtype, shape):
    array = (rng.normal(size=shape) * 100).astype(dtype)
    got = read_idx(write_idx(tmp_path / "f-idx", array))
    assert got.dtype == np.dtype(dtype) and got.shape == shape
    np.testing.assert_array_equal(got, array)


def test_idx_dot_spelling_is_accepted(tmp_path, rng):
    arrays = random_split(rng, 10, 10, shape=(6, 6))
    for name, a in zip(("train-images.idx3-ubyte", "train-labels.idx1-ubyte",
                        "t10k-images.idx3-ubyte", "t10k-labels.idx1-ubyte"), arrays, strict=True):
        write_idx(tmp_path / name, a)
    assert_dataset_equal(load_dataset(tmp_path), *arrays)


@pytest.mark.parametrize("meta, protocol", [(True, 2), (False, 2), (True, 5)])
def test_cifar10_batches_load_back_exactly(tmp_path, rng, meta, protocol):
    arrays = write_cifar(tmp_path, rng, meta=meta, protocol=protocol)
    data = load_dataset(tmp_path)
    assert data.format == "cifar10" and detect_format(tmp_path) == "cifar10"
    assert_dataset_equal(data, *arrays)
    assert data.x_train.shape == (30, 32, 32, 3) and data.x_train.dtype == np.uint8
    want_names = tuple(CIFAR_NAMES) if meta else tuple(str(k) for k in range(10))
    assert data.class_names == want_names and data.num_classes == 10


def test_cifar10_rows_are_channels_first():
    """The first 1024 bytes of a row are the red plane: pixel (0, 1) red is byte 1."""
    x = np.zeros((1, 32, 32, 3), np.uint8)
    x[0, 0, 1, 0], x[0, 2, 0, 2] = 7, 9
    row = x.transpose(0, 3, 1, 2).reshape(1, 3072)
    assert row[0, 1] == 7 and row[0, 2048 + 2 * 32] == 9


def test_npz_with_a_split_loads_back_exactly(tmp_path, rng):
    x_tr, y_tr, x_te, y_te = random_split(rng, 24, 12, shape=(8, 8, 3), classes=3)
    file = tmp_path / "data.npz"
    np.savez(file, x_train=x_tr, y_train=y_tr.astype(np.int64), x_test=x_te, y_test=y_te,
             class_names=np.array(["cat", "dog", "owl"]))
    data = load_dataset(file)
    assert data.format == "npz" and detect_format(file) == "npz"
    assert_dataset_equal(data, x_tr, y_tr, x_te, y_te)
    assert data.class_names == ("cat", "dog", "owl")


def test_npz_float_images_and_integral_float_labels(tmp_path, rng):
    x_tr, y_tr, x_te, y_te = random_split(rng, 12, 6, shape=(5, 7), classes=2, dtype=np.float32)
    np.savez(tmp_path / "f.npz", x_train=x_tr, y_train=y_tr.astype(np.float32), x_test=x_te,
             y_test=y_te.astype(np.float64))
    data = load_dataset(tmp_path / "f.npz", "npz")
    assert_dataset_equal(data, x_tr, y_tr, x_te, y_te)
    np.testing.assert_array_equal(scale_to_unit(data.x_train), x_tr[..., None])


def test_npz_x_y_is_split_by_class(tmp_path, rng):
    x = rng.integers(0, 256, size=(40, 6, 6), dtype=np.uint8)
    y = np.repeat([0, 1, 2, 3], 10)
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    data = load_dataset(tmp_path / "xy.npz", test_fraction=0.3, seed=1)
    assert np.bincount(data.y_test).tolist() == [3, 3, 3, 3]
    assert np.bincount(data.y_train).tolist() == [7, 7, 7, 7]
    train, test = stratified_split(y, 0.3, seed=1)
    assert_dataset_equal(data, x[train], y[train], x[test], y[test])
    assert sorted(np.r_[train, test]) == list(range(40))
    again = load_dataset(tmp_path / "xy.npz", test_fraction=0.3, seed=1)
    np.testing.assert_array_equal(again.y_test, data.y_test)
    other = stratified_split(y, 0.3, seed=2)[1]
    assert not np.array_equal(other, test)  # the seed picks the held-out images


def test_stratified_split_keeps_a_training_example_of_every_class():
    train, test = stratified_split(np.array([0, 1, 1, 2, 2, 2]), 0.9)
    assert set(np.array([0, 1, 1, 2, 2, 2])[train]) == {0, 1, 2}
    assert len(test) == 0 + 1 + 2


def test_image_folder_loads_back_exactly(tmp_path, rng):
    x, y = png_folder(tmp_path, rng, n=30)
    data = load_dataset(tmp_path, test_fraction=0.2, seed=0)
    assert data.format == "image_folder" and detect_format(tmp_path) == "image_folder"
    assert data.class_names == ("a", "b", "c") and data.num_classes == 3
    train, test = stratified_split(y, 0.2, seed=0)
    assert_dataset_equal(data, x[train], y[train], x[test], y[test])
    assert data.x_train.shape == (24, 8, 8, 1)


def test_image_folder_with_train_and_test_folders_in_colour(tmp_path, rng):
    names = ["bird", "cat"]
    x_tr, y_tr, x_te, y_te = random_split(rng, 10, 4, shape=(8, 6, 3), classes=2)
    write_png_folder(tmp_path / "train", x_tr, y_tr, names)
    write_png_folder(tmp_path / "test", x_te, y_te, names)
    # a grey image among colour ones is repeated to 3 channels; other files are skipped
    grey = rng.integers(0, 256, size=(8, 6), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "train" / "cat" / "9999.png")
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    data = load_dataset(tmp_path)
    assert data.class_names == ("bird", "cat")

    def by_class(x, y):
        order = np.argsort(y, kind="stable")
        return x[order], y[order]

    x_want, y_want = by_class(x_tr, y_tr)
    x_want = np.concatenate([x_want, np.repeat(grey[None, ..., None], 3, -1)])
    y_want = np.r_[y_want, 1]
    assert_dataset_equal(data, x_want, y_want, *by_class(x_te, y_te))


def test_image_folder_reads_rgba_and_palette_pngs_as_rgb(tmp_path, rng):
    rgb = rng.integers(0, 256, size=(2, 4, 4, 3), dtype=np.uint8)
    for split in ("train", "test"):
        (tmp_path / split / "x").mkdir(parents=True)
    rgba = np.concatenate([rgb[0], np.full((4, 4, 1), 128, np.uint8)], -1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "train" / "x" / "0.png")
    palette = Image.fromarray(rgb[1]).convert("P")
    palette.save(tmp_path / "train" / "x" / "1.png")
    Image.fromarray(rgb[0]).save(tmp_path / "test" / "x" / "0.png")
    data = load_dataset(tmp_path)
    assert data.x_train.shape == (2, 4, 4, 3) and data.num_classes == 1
    np.testing.assert_array_equal(data.x_train[0], rgb[0])  # alpha dropped
    np.testing.assert_array_equal(data.x_train[1], np.asarray(palette.convert("RGB")))


def test_scale_to_unit():
    np.testing.assert_array_equal(scale_to_unit(np.array([0, 255], np.uint8)), [0.0, 1.0])
    assert scale_to_unit(np.array([0.25], np.float64)).dtype == np.float32
    with pytest.raises(TypeError, match="images must be integers"):
        scale_to_unit(np.array(["a"]))


def test_formats_are_the_documented_ones():
    assert FORMATS == ("idx", "cifar10", "npz", "image_folder")


# ---------------------------------------------------------------------------- bad inputs


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _mnist(tmp, rng, **kwargs):
    write_mnist(tmp, rng, n_train=12, n_test=6, shape=(6, 6), **kwargs)
    return tmp


def _idx_bad_counts(tmp, rng):
    _mnist(tmp, rng)
    write_idx(tmp / "train-labels-idx1-ubyte", np.zeros(11, np.uint8))
    return tmp


def _idx_bad_shapes(tmp, rng):
    _mnist(tmp, rng)
    write_idx(tmp / "t10k-images-idx3-ubyte", np.zeros((6, 7, 7), np.uint8))
    return tmp


def _idx_missing(tmp, rng):
    _mnist(tmp, rng)
    (tmp / "t10k-labels-idx1-ubyte").unlink()
    return tmp


def _idx_raw(raw: bytes):
    def make(tmp, rng):
        _mnist(tmp, rng)
        (tmp / "train-images-idx3-ubyte").write_bytes(raw)
        return tmp
    return make


def _idx_truncated(tmp, rng):
    _mnist(tmp, rng)
    f = tmp / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-5])
    return tmp


def _idx_bad_gzip(tmp, rng):
    _mnist(tmp, rng, gz=True)
    (tmp / "train-images-idx3-ubyte.gz").write_bytes(b"\x00\x00\x08\x03 not gzip")
    return tmp


def _idx_labels_2d(tmp, rng):
    _mnist(tmp, rng)
    write_idx(tmp / "train-labels-idx1-ubyte", np.zeros((12, 1), np.uint8))
    return tmp


def _cifar(tmp, rng, **kwargs):
    write_cifar(tmp, rng, batches=1, per_batch=6, n_test=4, **kwargs)
    return tmp


def _cifar_dump(name, obj):
    def make(tmp, rng):
        _cifar(tmp, rng)
        with (tmp / name).open("wb") as f:
            pickle.dump(obj, f, protocol=2)
        return tmp
    return make


def _cifar_label_out_of_range(tmp, rng):
    _cifar(tmp, rng)
    batch = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 10, 2]}
    with (tmp / "test_batch").open("wb") as f:
        pickle.dump(batch, f, protocol=2)
    return tmp


def _cifar_gap(tmp, rng):
    _cifar(tmp, rng)
    (tmp / "data_batch_3").write_bytes((tmp / "data_batch_1").read_bytes())
    return tmp


def _cifar_no_test(tmp, rng):
    _cifar(tmp, rng)
    (tmp / "test_batch").unlink()
    return tmp


def _npz(**arrays):
    def make(tmp, rng):
        np.savez(tmp / "d.npz", **arrays)
        return tmp / "d.npz"
    return make


def _folder_mixed_sizes(tmp, rng):
    png_folder(tmp, rng, n=6)
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(tmp / "b" / "big.png")
    return tmp


def _folder_empty_class(tmp, rng):
    png_folder(tmp, rng, n=6)
    (tmp / "d").mkdir()
    (tmp / "d" / "readme.txt").write_text("no images here")
    return tmp


def _folder_unknown_test_class(tmp, rng):
    png_folder(tmp / "train", rng, n=6)
    png_folder(tmp / "test", rng, n=4, classes=("a", "z"))
    return tmp


def _folder_corrupt(tmp, rng):
    png_folder(tmp, rng, n=6)
    (tmp / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    return tmp


def _folder_16_bit(tmp, rng):
    png_folder(tmp, rng, n=6)
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(tmp / "a" / "deep.png")
    return tmp


def _unknown_dir(tmp, rng):
    (tmp / "README.txt").write_text("hello")
    (tmp / "empty").mkdir()
    return tmp


def _text_file(tmp, rng):
    (tmp / "data.csv").write_text("1,2,3")
    return tmp / "data.csv"


U8 = np.zeros((6, 4, 4), np.uint8)
LABELS = np.array([0, 1, 0, 1, 0, 1])

BAD = [
    # (name, make(tmp, rng) -> path, load_dataset kwargs, message regex)
    ("no such path", lambda t, r: t / "nope", {}, r"path '.*nope' does not exist"),
    ("unknown directory", _unknown_dir, {},
     r"holds no dataset in a known format \(found \[README.txt, empty/\]\); accepted: a \.npz"),
    ("unknown file", _text_file, {}, r"data.csv' is a file in no known format; accepted"),
    ("unknown format name", lambda t, r: t, {"format": "hdf5"},
     r"format must be 'auto' or one of \('idx', 'cifar10', 'npz', 'image_folder'\), "
     r"got 'hdf5'"),
    ("idx counts", _idx_bad_counts, {},
     r"train-images-idx3-ubyte holds 12 images but train-labels-idx1-ubyte holds 11 labels"),
    ("idx shapes", _idx_bad_shapes, {},
     r"train and test images must share one shape.*train-images-idx3-ubyte holds \(6, 6, 1\), "
     r"t10k-images-idx3-ubyte holds \(7, 7, 1\)"),
    ("idx missing", _idx_missing, {}, r"missing IDX file\(s\) \['t10k-labels-idx1-ubyte'\]"),
    ("idx magic", _idx_raw(b"\x01\x02\x08\x03rest"), {},
     r"train-images-idx3-ubyte: not an IDX file .*found 01 02 08 03"),
    ("idx type code", _idx_raw(struct.pack(">4BI", 0, 0, 0x07, 1, 3) + b"abc"), {},
     r"unknown IDX type code 0x07; accepted: 0x08"),
    ("idx truncated", _idx_truncated, {},
     r"header says shape \(12, 6, 6\) of uint8 \(448 bytes with the header\) but the file "
     r"holds 443 bytes"),
    ("idx bad gzip", _idx_bad_gzip, {}, r"train-images-idx3-ubyte.gz: not a readable gzip"),
    ("idx labels not 1-d", _idx_labels_2d, {},
     r"train-labels-idx1-ubyte: an IDX file of labels \[N\] must have 1 dimension\(s\), got "
     r"shape \(12, 1\)"),
    ("cifar data width", _cifar_dump("data_batch_1", {b"data": np.zeros((2, 1024), np.uint8),
                                                      b"labels": [0, 1]}), {},
     r"data_batch_1: b'data' must be uint8 \[N, 3072\].*got uint8 \(2, 1024\)"),
    ("cifar keys", _cifar_dump("test_batch", {b"data": np.zeros((2, 3072), np.uint8)}), {},
     r"test_batch: a CIFAR-10 batch needs the keys b'data' and b'labels', found \[data\]"),
    ("cifar not a dict", _cifar_dump("test_batch", [1, 2]), {}, r"must be a pickled dict"),
    ("cifar label range", _cifar_label_out_of_range, {},
     r"test_batch \(b'labels'\): labels must be in 0..9 \(one per class name\), found 10"),
    ("cifar unsafe pickle", _cifar_dump("data_batch_1", {b"data": _Evil()}), {},
     r"data_batch_1: not a CIFAR-10 python batch.*refusing to load global (posix|nt).system"),
    ("cifar count", _cifar_dump("test_batch", {b"data": np.zeros((3, 3072), np.uint8),
                                               b"labels": [0, 1]}), {},
     r"test_batch \(b'data'\) holds 3 images but test_batch \(b'labels'\) holds 2 labels"),
    ("cifar gap", _cifar_gap, {}, r"data_batch_1 .. data_batch_k without gaps, found numbers "
                                  r"\[1, 3\]"),
    ("cifar no test", _cifar_no_test, {}, r"missing CIFAR-10 batch file\(s\) \['test_batch'\]"),
    ("npz keys", _npz(a=U8, b=LABELS), {},
     r"d.npz: expected the arrays x_train, y_train, x_test, y_test \(or x and y\), found "
     r"\[a, b\]"),
    ("npz fractional labels", _npz(x=U8, y=np.array([0, 1, 0.5, 1, 0, 1])), {},
     r"d.npz\[y\]: labels must be integers 0..K-1, found the non-integer value 0.5"),
    ("npz negative label", _npz(x=U8, y=np.array([0, 1, -1, 1, 0, 1])), {},
     r"d.npz\[y\]: labels must be integers 0..K-1, found -1"),
    ("npz string labels", _npz(x=U8, y=np.array(list("ababab"))), {},
     r"labels must be integers 0..K-1, got dtype <U1"),
    ("npz one-hot labels", _npz(x=U8, y=np.eye(2)[LABELS]), {},
     r"d.npz\[y\]: labels must be a 1-D array of class indices \[N\], got shape \(6, 2\)"),
    ("npz count", _npz(x=U8, y=LABELS[:5]), {},
     r"d.npz\[x\] holds 6 images but d.npz\[y\] holds 5 labels"),
    ("npz float range", _npz(x=U8.astype(np.float32) + 255, y=LABELS), {},
     r"d.npz\[x\]: float images must hold values in \[0, 1\], found \[255, 255\]"),
    ("npz int range", _npz(x=U8.astype(np.int32) + 300, y=LABELS), {},
     r"integer images must hold values in 0..255, found 300..300"),
    ("npz channels first", _npz(x=np.zeros((6, 3, 8, 8), np.uint8), y=LABELS), {},
     r"1 to 4 channels last.*got shape \(6, 3, 8, 8\) \(it looks channels-first"),
    ("npz flat", _npz(x=np.zeros((6, 64), np.uint8), y=LABELS), {},
     r"images must be \[N, H, W\] or \[N, H, W, C\], got shape \(6, 64\)"),
    ("npz train/test kinds", _npz(x_train=U8, y_train=LABELS, x_test=U8 / 255.0,
                                  y_test=LABELS), {},
     r"must both be integers 0..255 or both floats in \[0, 1\]: d.npz\[x_train\] is uint8, "
     r"d.npz\[x_test\] is float64"),
    ("npz class names", _npz(x=U8, y=LABELS, class_names=np.array([1, 2])), {},
     r"class_names must be a 1-D array of strings"),
    ("npz label beyond names", _npz(x=U8, y=LABELS * 2, class_names=np.array(["a", "b"])), {},
     r"labels must be in 0..1 \(one per class name\), found 2"),
    ("npz no test images", _npz(x=U8, y=np.arange(6)), {},
     r"d.npz: holding out test_fraction=0.25 of each class of \[1, 1, 1, 1, 1, 1\] images "
     r"leaves no test images"),
    ("npz test fraction", _npz(x=U8, y=LABELS), {"test_fraction": 1.5},
     r"test_fraction must be a float in \(0, 1\), got 1.5"),
    ("npz not a zip", lambda t, r: (t / "d.npz").write_text("x") and t / "d.npz", {},
     r"d.npz: not a readable .npz file"),
    ("folder mixed sizes", _folder_mixed_sizes, {},
     r"images of mixed sizes: .*a/0000.png is 8x8 \(HxW\) but .*b/big.png is 9x9"),
    ("folder empty class", _folder_empty_class, {},
     r"class folder .*/d holds no images \(.png\|.jpg\|.jpeg\|.bmp\)"),
    ("folder unknown test class", _folder_unknown_test_class, {},
     r"test: class folders \['z'\] are not among the training classes \[a, b, c\]"),
    ("folder corrupt image", _folder_corrupt, {}, r"a/broken.png: not a readable image"),
    ("folder 16-bit image", _folder_16_bit, {},
     r"a/deep.png: image mode 'I;16' is not supported; accepted: 8-bit"),
    ("folder without class folders", lambda t, r: t, {"format": "image_folder"},
     r"holds no class folders; expected <class>/\*.png"),
    ("idx format on a file", _npz(x=U8, y=LABELS), {"format": "idx"},
     r"must be a directory holding the four IDX files"),
]


@pytest.mark.parametrize("make, kwargs, match", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_inputs(tmp_path, rng, make, kwargs, match):
    path = make(tmp_path, rng)
    with pytest.raises(ValueError, match=match):
        load_dataset(path, **kwargs)


def test_bad_argument_types(tmp_path):
    with pytest.raises(TypeError, match=r"path must be a str or pathlib\.Path, got int"):
        load_dataset(3)
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split([0, 1], 0)
