"""Data tasks: MNIST from IDX files (written here, byte by byte), modular addition, permutation S4."""
from __future__ import annotations

import gzip
import hashlib
import itertools
import struct
import urllib.error

import numpy as np
import pytest
import torch

import modcircuit.tasks.algebraic as algebraic
import modcircuit.tasks.mnist as mnist_mod
from modcircuit.errors import ModcircuitError
from modcircuit.tasks import get_task

torch.set_num_threads(1)


# ---- an IDX writer independent of the library's reader ------------------------------------------
def idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    if magic is None:
        magic = 0x0800 | arr.ndim
    return struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def write_mnist(folder, n_train=50, n_test=20, seed=0, gz=False):
    rng = np.random.default_rng(seed)
    arrays = {
        NAMES[0]: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        NAMES[1]: rng.integers(0, 10, n_train, dtype=np.uint8),
        NAMES[2]: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        NAMES[3]: rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        data = idx_bytes(arr)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


@pytest.fixture
def mnist_dir(tmp_path):
    folder = tmp_path / "mnist"
    return folder, write_mnist(folder)


# ---- MNIST -------------------------------------------------------------------------------------
def test_mnist_loads_pixels_labels_and_settings(mnist_dir):
    folder, arrays = mnist_dir
    task = get_task("mnist", data_dir=str(folder))
    assert task.x_train.shape == (50, 784) and task.x_test.shape == (20, 784)
    assert task.x_train.dtype == torch.float32 and task.y_train.dtype == torch.int64
    expect = torch.from_numpy(arrays[NAMES[0]].reshape(50, 784).astype(np.float32)) / 255.0
    assert torch.equal(task.x_train, expect)
    assert torch.equal(task.y_train, torch.from_numpy(arrays[NAMES[1]].astype(np.int64)))
    assert torch.equal(task.y_test, torch.from_numpy(arrays[NAMES[3]].astype(np.int64)))
    assert 0.0 <= task.x_train.min() and task.x_train.max() <= 1.0
    assert task.widths == [784, 100, 100, 10] and task.loss == "mse-onehot"
    assert task.layouts[0] == {"kind": "grid", "shape": [28, 28]} and task.layouts[-1] == {"kind": "ring"}
    assert task.layouts[1] == task.layouts[2] == {"kind": "grid", "shape": [10, 10]}
    d = task.defaults
    assert (d["l0"], d["weight_factor"], d["top_k"], d["swap_every"], d["lr"], d["steps"], d["batch_size"]) == (
        0.5, 2.0, 30, 500, 1e-3, 40000, 100)
    assert d["agg"] == "mean" and d["lam"] == 0.01 and d["lam_schedule"] == [[0.25, 10.0], [0.5, 100.0]]
    assert d["swap_outputs"] is True
    # pixel (r, c) of the image is input feature r*28 + c
    assert task.input_names[28 * 3 + 5] == "px3,5"
    assert task.x_train[7, 28 * 3 + 5] == float(arrays[NAMES[0]][7, 3, 5]) / 255.0


def test_mnist_reads_gzip(tmp_path):
    write_mnist(tmp_path / "raw", seed=3)
    raw = get_task("mnist", data_dir=str(tmp_path / "raw"))
    write_mnist(tmp_path / "gz", seed=3, gz=True)
    assert not (tmp_path / "gz" / NAMES[0]).exists()
    gz = get_task("mnist", data_dir=str(tmp_path / "gz"))
    assert torch.equal(gz.x_train, raw.x_train) and torch.equal(gz.y_test, raw.y_test)


def test_mnist_missing_folder_says_what_to_do(tmp_path, monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("download attempted without download=True")

    monkeypatch.setattr(mnist_mod.urllib.request, "urlopen", no_network)
    missing = tmp_path / "nowhere"
    with pytest.raises(ModcircuitError) as e:
        get_task("mnist", data_dir=str(missing))
    msg = str(e.value)
    assert str(missing) in msg and "--data-dir" in msg and "make mnist-sample" in msg and "download" in msg
    assert "\n" not in msg


def test_mnist_missing_file_is_named(mnist_dir):
    folder, _ = mnist_dir
    (folder / NAMES[3]).unlink()
    with pytest.raises(ModcircuitError, match=NAMES[3]):
        get_task("mnist", data_dir=str(folder))


@pytest.mark.parametrize("which", [0, 1, 2, 3])
def test_mnist_truncated_file_is_named(mnist_dir, which):
    folder, _ = mnist_dir
    path = folder / NAMES[which]
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ModcircuitError, match=r"truncated") as e:
        get_task("mnist", data_dir=str(folder))
    assert str(path) in str(e.value)


def test_mnist_truncated_header_and_trailing_bytes(mnist_dir):
    folder, _ = mnist_dir
    path = folder / NAMES[0]
    good = path.read_bytes()
    path.write_bytes(good[:10])  # magic + part of the dims
    with pytest.raises(ModcircuitError, match="header"):
        get_task("mnist", data_dir=str(folder))
    path.write_bytes(good + b"\x00")
    with pytest.raises(ModcircuitError, match=NAMES[0]):
        get_task("mnist", data_dir=str(folder))


def test_mnist_truncated_gzip_is_named(tmp_path):
    folder = tmp_path / "gz"
    write_mnist(folder, gz=True)
    path = folder / (NAMES[0] + ".gz")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ModcircuitError) as e:
        get_task("mnist", data_dir=str(folder))
    assert str(path) in str(e.value)


def test_mnist_wrong_magic_is_named(mnist_dir):
    folder, arrays = mnist_dir
    # labels written where images belong: a valid IDX file with the wrong magic (0x801)
    (folder / NAMES[0]).write_bytes(idx_bytes(arrays[NAMES[1]]))
    with pytest.raises(ModcircuitError, match="magic") as e:
        get_task("mnist", data_dir=str(folder))
    assert NAMES[0] in str(e.value)
    # garbage magic
    (folder / NAMES[0]).write_bytes(b"\x12\x34\x56\x78" + b"\x00" * 100)
    with pytest.raises(ModcircuitError, match="magic"):
        get_task("mnist", data_dir=str(folder))


def test_mnist_images_and_labels_must_agree(mnist_dir):
    folder, arrays = mnist_dir
    (folder / NAMES[1]).write_bytes(idx_bytes(arrays[NAMES[1]][:49]))
    with pytest.raises(ModcircuitError, match="disagree"):
        get_task("mnist", data_dir=str(folder))
    bad = arrays[NAMES[1]].copy()
    bad[0] = 10
    (folder / NAMES[1]).write_bytes(idx_bytes(bad))
    with pytest.raises(ModcircuitError, match="label 10"):
        get_task("mnist", data_dir=str(folder))
    (folder / NAMES[1]).write_bytes(idx_bytes(arrays[NAMES[1]]))
    (folder / NAMES[0]).write_bytes(idx_bytes(arrays[NAMES[0]].reshape(50, 14, 56)))
    with pytest.raises(ModcircuitError, match="28, 28"):
        get_task("mnist", data_dir=str(folder))


def test_mnist_subsample_is_deterministic_per_seed(mnist_dir):
    folder, arrays = mnist_dir
    full = get_task("mnist", data_dir=str(folder))
    a = get_task("mnist", seed=1, data_dir=str(folder), n_train=10, n_test=5)
    b = get_task("mnist", seed=1, data_dir=str(folder), n_train=10, n_test=5)
    c = get_task("mnist", seed=2, data_dir=str(folder), n_train=10, n_test=5)
    assert a.x_train.shape == (10, 784) and a.x_test.shape == (5, 784)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)
    # every kept example is an original one with its own label
    rows = {tuple(r.tolist()): int(y) for r, y in zip(full.x_train, full.y_train)}
    assert all(rows[tuple(r.tolist())] == int(y) for r, y in zip(a.x_train, a.y_train))
    for bad in (0, 51, -3, 2.5):
        with pytest.raises(ModcircuitError, match="n_train"):
            get_task("mnist", data_dir=str(folder), n_train=bad)


def test_mnist_default_folder_from_environment(mnist_dir, monkeypatch):
    folder, _ = mnist_dir
    monkeypatch.setenv("MODCIRCUIT_DATA", str(folder))
    assert get_task("mnist").x_train.shape == (50, 784)
    monkeypatch.setenv("MODCIRCUIT_DATA", str(folder.parent))  # a data root holding mnist/
    assert get_task("mnist").x_test.shape == (20, 784)


class _Response:
    def __init__(self, data):
        self.data = data

    def read(self, n=-1):
        return self.data if n is None or n < 0 else self.data[:n]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_download_verifies_checksums_and_tries_mirrors(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_mnist(src, gz=True, seed=5)
    payload = {n + ".gz": (src / (n + ".gz")).read_bytes() for n in NAMES}
    official = {k: (len(v), hashlib.sha256(v).hexdigest(), hashlib.md5(v).hexdigest()) for k, v in payload.items()}
    monkeypatch.setattr(mnist_mod, "OFFICIAL", official)
    monkeypatch.setattr(mnist_mod, "MIRRORS", ("https://dead.example/", "https://bad.example/", "https://good.example/"))
    calls = []

    def fake_urlopen(url, timeout=None):
        calls.append(url)
        name = url.rsplit("/", 1)[1]
        if url.startswith("https://dead"):
            raise urllib.error.URLError("unreachable")
        if url.startswith("https://bad"):
            return _Response(payload[name][:-1] + b"x")  # right size, wrong content
        return _Response(payload[name])

    monkeypatch.setattr(mnist_mod.urllib.request, "urlopen", fake_urlopen)
    dest = tmp_path / "dest"
    task = get_task("mnist", data_dir=str(dest), download=True)
    assert task.x_train.shape == (50, 784)
    assert sorted(p.name for p in dest.iterdir()) == sorted(payload)  # no partial files left
    assert len(calls) == 12
    # already there: nothing fetched again
    calls.clear()
    get_task("mnist", data_dir=str(dest), download=True)
    assert calls == []


def test_download_rejects_bad_checksums_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist_mod.urllib.request, "urlopen", lambda url, timeout=None: _Response(b"not mnist"))
    dest = tmp_path / "dest"
    with pytest.raises(ModcircuitError, match="checksum") as e:
        get_task("mnist", data_dir=str(dest), download=True)
    assert "train-images-idx3-ubyte.gz" in str(e.value)
    assert list(dest.iterdir()) == []


def test_official_checksums_are_well_formed():
    assert set(mnist_mod.OFFICIAL) == {n + ".gz" for n in NAMES}
    for size, sha256, md5 in mnist_mod.OFFICIAL.values():
        assert size > 0 and len(sha256) == 64 and len(md5) == 32
        int(sha256, 16), int(md5, 16)


# ---- modular addition --------------------------------------------------------------------------
def test_modular_addition_sizes_labels_and_split():
    t = get_task("modular-addition", seed=0)
    p = 59
    assert t.x_train.shape == (int(0.8 * p * p), 2) and t.x_test.shape == (p * p - int(0.8 * p * p), 2)
    assert t.x_train.dtype == torch.long and t.loss == "ce"
    assert t.widths == [64, 50, 50, p] and t.embedding == {"vocab": p, "dim": 32, "n_tokens": 2}
    assert t.layouts[0] == {"kind": "line", "folds": 2}
    assert t.defaults["swap_inputs"] is True and t.defaults["agg"] == "mean"
    assert t.output_names == [str(r) for r in range(p)]
    pairs = {tuple(r) for r in torch.cat([t.x_train, t.x_test]).tolist()}
    assert pairs == set(itertools.product(range(p), repeat=2))  # all pairs, each once (sizes add up)
    rng = np.random.default_rng(0)
    for x, y in ((t.x_train, t.y_train), (t.x_test, t.y_test)):
        for i in rng.integers(0, len(x), 50):
            a, b = int(x[i, 0]), int(x[i, 1])
            assert int(y[i]) == (a + b) % p


def test_modular_addition_modulus_option_and_bad_values():
    t = get_task("modular-addition", p=7)
    assert len(t.x_train) + len(t.x_test) == 49 and t.widths[-1] == 7
    assert all(int(y) == (int(a) + int(b)) % 7 for (a, b), y in zip(t.x_train, t.y_train))
    for bad in (1, 0, "x", 2.5):
        with pytest.raises(ModcircuitError, match="p "):
            get_task("modular-addition", p=bad)
    for bad in (0, 1, 1.5, "half"):
        with pytest.raises(ModcircuitError, match="train_frac"):
            get_task("modular-addition", train_frac=bad)


@pytest.mark.parametrize("name", ["modular-addition", "permutation-s4"])
def test_algebraic_split_deterministic_per_seed(name):
    a, b, c = get_task(name, seed=3), get_task(name, seed=3), get_task(name, seed=4)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_test, b.x_test)
    assert not torch.equal(a.x_train, c.x_train)
    assert {tuple(r) for r in a.x_test.tolist()} != {tuple(r) for r in c.x_test.tolist()}


# ---- S4 ----------------------------------------------------------------------------------------
def _perm_matrix(one_line: str) -> np.ndarray:
    """Matrix sending basis vector e_k to e_{perm(k)}; products of such matrices compose right to left."""
    m = np.zeros((4, 4), dtype=int)
    for k, v in enumerate(one_line):
        m[int(v), k] = 1
    return m


def test_permutation_s4_sizes_and_composition():
    t = get_task("permutation-s4", seed=0)
    assert t.x_train.shape == (460, 2) and t.x_test.shape == (116, 2)
    assert t.widths == [64, 50, 50, 24] and t.embedding == {"vocab": 24, "dim": 32, "n_tokens": 2}
    assert t.layouts[0] == {"kind": "line", "folds": 2} and t.loss == "ce"
    names = t.output_names
    assert len(set(names)) == 24 and sorted(names) == sorted("".join(p) for p in itertools.permutations("0123"))
    pairs = {tuple(r) for r in torch.cat([t.x_train, t.x_test]).tolist()}
    assert pairs == set(itertools.product(range(24), repeat=2))
    # the input index i denotes the element output_names[i]; label must be a∘b, (a∘b)(k) = a(b(k))
    rng = np.random.default_rng(1)
    for x, y in ((t.x_train, t.y_train), (t.x_test, t.y_test)):
        for i in rng.integers(0, len(x), 60):
            a, b = names[int(x[i, 0])], names[int(x[i, 1])]
            prod = _perm_matrix(a) @ _perm_matrix(b)  # apply b, then a
            assert np.array_equal(_perm_matrix(names[int(y[i])]), prod)
    # the convention matters: S4 is not abelian, so the opposite convention would fail above
    xs, ys = torch.cat([t.x_train, t.x_test]), torch.cat([t.y_train, t.y_test])
    table = {tuple(r): int(v) for r, v in zip(xs.tolist(), ys)}
    assert any(table[(a, b)] != table[(b, a)] for a in range(24) for b in range(24))
    assert names[0] == "0123" and all(table[(0, b)] == b and table[(b, 0)] == b for b in range(24))


# ---- every task builds its model ---------------------------------------------------------------
def test_every_new_task_builds_and_runs_forward(mnist_dir):
    folder, _ = mnist_dir
    tasks = [get_task("mnist", data_dir=str(folder)), get_task("modular-addition"),
             get_task("modular-addition", p=7), get_task("permutation-s4")]
    for t in tasks:
        model = t.build_model()
        out = model(t.x_test[:9])
        assert out.shape == (min(9, len(t.x_test)), t.widths[-1])
        assert torch.isfinite(out).all()
        assert len(t.input_names) == t.widths[0] and len(t.output_names) == t.widths[-1]
        res = t.evaluate(model)
        assert 0.0 <= res["accuracy"] <= 1.0
        loss = t.loss_fn(model(t.x_train[:16]), t.y_train[:16])
        loss.backward()
        assert all(p.grad is not None for p in model.parameters())
