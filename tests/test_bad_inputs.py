"""Every bad input the command line can be given is refused: exit 2, ONE line `error: ...` on stderr naming
the value and what is allowed, no traceback, and nothing written.

The cases are one table, CASES. Each row is

    ("id", "argv template", "expected fragment")

  id        a short unique name (the pytest id), grouped by command: "train-seed-negative", "discover-npy", ...
  argv      the command line after `modcircuit`, split with shlex.split after str.format(**paths); paths are
            the shared fixtures built once per session (see `fixtures` below):
              {run}          a tiny two-moons run (MLP 2,20,20,2, classification)
              {token_run}    a tiny modular-addition run (token inputs: 2 ids in [0, 59), 59 classes)
              {nan_run}      the two-moons run saved with one NaN weight (linears.1.weight[3, 4])
              {circuit}      a circuit of {run} (eap)
              {tf_run}       a tiny transformer run (incontext-regression, 2 layers x 2 heads; no ground truth)
              {tf_circuit}   a circuit of {tf_run} (eap, q/k/v apart)
              {npz[NAME]}    an .npz or other data file in DATA below, by NAME
              {missing}      a path that does not exist
              {bad[NAME]}    a damaged or foreign file/folder from BROKEN below (flipped checkpoint byte,
                             hand-edited model.json or circuit file, another model's circuit, a user's
                             folder, a garbage results file, bad study files, ...)
              {out}          an output path in the case's own empty folder (also the working folder)
  fragment  a case-sensitive substring of the one error line (name the value and the allowed range)

Each case checks: exit status 2; stderr is exactly one line, starting `error: ` and containing the
fragment; no "Traceback"; the case's folder is still empty (so {out} was not created) and the shared
fixture folder is byte-for-byte unchanged. To add a case, append a row; to add a data file, add an
entry to DATA (a function of a seeded numpy Generator returning the arrays, or bytes for a raw file).
"""
from __future__ import annotations

import hashlib
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

import modcircuit as mc
from modcircuit.cli import main


def _moons_x(g, n=50):
    return g.standard_normal((n, 2)).astype(np.float32)


def _set(a, flat_index, value):
    a = a.astype(np.float64).copy()
    a.reshape(-1)[flat_index] = value
    return a


# name -> arrays of an .npz (dict), or raw bytes (written as is, under the name given by its key)
DATA = {
    "ok.npz": lambda g: dict(clean=_moons_x(g), corrupt=_moons_x(g), labels=np.arange(50) % 2),
    "x.npy": lambda g: _moons_x(g),  # np.save: one bare array
    "nan.npz": lambda g: dict(clean=_set(_moons_x(g), 7, np.nan), corrupt=_moons_x(g)),
    "inf.npz": lambda g: dict(clean=_moons_x(g), corrupt=_set(_moons_x(g), 3, np.inf)),
    "huge.npz": lambda g: dict(clean=_set(_moons_x(g), 5, 1e300), corrupt=_moons_x(g)),
    "shape3.npz": lambda g: dict(clean=_moons_x(g)[:, :, None], corrupt=_moons_x(g)[:, :, None]),
    "width3.npz": lambda g: dict(clean=g.standard_normal((50, 3)), corrupt=g.standard_normal((50, 3))),
    "float-labels.npz": lambda g: dict(clean=_moons_x(g), corrupt=_moons_x(g), labels=np.linspace(0, 1, 50)),
    "nan-labels.npz": lambda g: dict(clean=_moons_x(g), corrupt=_moons_x(g), labels=_set(np.ones(50), 4, np.nan)),
    "label-7.npz": lambda g: dict(clean=_moons_x(g), corrupt=_moons_x(g), labels=np.where(np.arange(50) == 4, 7, 1)),
    "label-neg.npz": lambda g: dict(clean=_moons_x(g), corrupt=_moons_x(g), labels=np.where(np.arange(50) == 9, -1, 0)),
    "labels-short.npz": lambda g: dict(clean=_moons_x(g), corrupt=_moons_x(g), labels=np.zeros(10, dtype=int)),
    "no-corrupt.npz": lambda g: dict(clean=_moons_x(g), other=_moons_x(g)),
    "mismatch.npz": lambda g: dict(clean=_moons_x(g), corrupt=_moons_x(g, 40)),
    "empty.npz": lambda g: dict(clean=np.zeros((0, 2)), corrupt=np.zeros((0, 2))),
    "strings.npz": lambda g: dict(clean=np.array([["a", "b"]] * 3), corrupt=np.array([["a", "b"]] * 3)),
    "float-tokens.npz": lambda g: dict(clean=g.uniform(0, 58, (50, 2)), corrupt=g.uniform(0, 58, (50, 2))),
    "token-99.npz": lambda g: dict(clean=_set(g.integers(0, 59, (50, 2)), 10, 99).astype(np.int64),
                                   corrupt=g.integers(0, 59, (50, 2))),
    "garbage.npz": lambda g: b"this is not a zip file",
}

def _copy_run(root: Path, name: str, edit=None) -> Path:
    """A copy of {run} under `name`, its model.json changed by edit(meta) (hash left as recorded)."""
    import json
    import shutil

    dst = root / name
    shutil.copytree(root / "run", dst)
    if edit is not None:
        meta = json.loads((dst / "model.json").read_text())
        edit(meta)
        (dst / "model.json").write_text(json.dumps(meta, indent=1))
    return dst


def _flip_byte(root: Path, name: str) -> Path:
    dst = _copy_run(root, name)
    data = bytearray((dst / "model.safetensors").read_bytes())
    data[-17] ^= 0x01  # inside the tensor data, past the header: still parses, values differ
    (dst / "model.safetensors").write_bytes(bytes(data))
    return dst


def _edit_circuit(root: Path, name: str, edit) -> Path:
    import json

    meta = json.loads((root / "circuit.json").read_text())
    edit(meta)
    (root / name).write_text(json.dumps(meta))
    return root / name


def _study(root: Path, name: str, text: str) -> Path:
    (root / name).write_text(text)
    return root / name


_STUDY = """name = "{name}"
tasks = ["two-moons"]
regimes = ["vanilla"]
seeds = [0]
methods = ["eap"]
thresholds = [0.01]
results = "results-{name}.duckdb"
"""


def _set_key(key, value):
    def edit(meta):
        meta[key] = value
    return edit


def _set_edge(i, key, value):
    def edit(meta):
        meta["edges"][i][key] = value
    return edit


def _repeat_edge(meta):
    meta["edges"][1] = dict(meta["edges"][0])


def _truth_file(root: Path, name: str, record) -> Path:
    import json

    (root / name).write_text(record if isinstance(record, str) else json.dumps(record))
    return root / name


def _user_folder(root: Path, name: str) -> Path:
    (root / name).mkdir()
    (root / name / "notes.txt").write_text("my notes")
    return root / name


# name -> builder(root) of a damaged or foreign file/folder (the fixture folder holds run/ and circuit.json)
BROKEN = {
    "flipped-byte": lambda root: _flip_byte(root, "flipped-byte"),
    "seed-zero": lambda root: _copy_run(root, "seed-zero", _set_key("seed", "zero")),
    "regime-bogus": lambda root: _copy_run(root, "regime-bogus", _set_key("regime", "bogus")),
    "checkpoint-v99": lambda root: _copy_run(root, "checkpoint-v99", _set_key("version", 99)),
    "kept-yes.json": lambda root: _edit_circuit(root, "kept-yes.json", _set_edge(3, "kept", "yes")),
    "edge-twice.json": lambda root: _edit_circuit(root, "edge-twice.json", _repeat_edge),
    "n-kept-wrong.json": lambda root: _edit_circuit(root, "n-kept-wrong.json", _set_key("n_kept", 5)),
    "circuit-v99.json": lambda root: _edit_circuit(root, "circuit-v99.json", _set_key("version", 99)),
    "truth-2x2.json": lambda root: _truth_file(root, "truth-2x2.json", {"n_layers": 2, "n_heads": 2,
                                                                         "edges": [["A1.0", "output"]]}),
    "truth-3x2.json": lambda root: _truth_file(root, "truth-3x2.json", {"n_layers": 3, "n_heads": 2,
                                                                         "edges": [["A2.0", "output"]]}),
    "truth-backwards.json": lambda root: _truth_file(root, "truth-backwards.json", {
        "n_layers": 2, "n_heads": 2, "edges": [["A1.0", "A0.1.q"]]}),
    "truth-no-edges.json": lambda root: _truth_file(root, "truth-no-edges.json", {"n_layers": 2}),
    "truth-garbage.json": lambda root: _truth_file(root, "truth-garbage.json", "{not json"),
    "precious": lambda root: _user_folder(root, "precious"),
    "afile.txt": lambda root: (root / "afile.txt").write_text("a user's file") and root / "afile.txt",
    "garbage.duckdb": lambda root: (root / "garbage.duckdb").write_bytes(b"not a database" * 100) and root / "garbage.duckdb",
    "evil-name.toml": lambda root: _study(root, "evil-name.toml", _STUDY.format(name="../../evil")),
    "metric-foo.toml": lambda root: _study(root, "metric-foo.toml", _STUDY.format(name="foo") + 'metric = "foo"\n'),
    "bad-widths.toml": lambda root: _study(root, "bad-widths.toml", _STUDY.format(name="widths")
                                           + "[train]\nwidths = [2, 8, 3]\n"),
    "unknown-key.toml": lambda root: _study(root, "unknown-key.toml", _STUDY.format(name="typo") + "seedz = [1]\n"),
    "control-bogus.toml": lambda root: _study(root, "control-bogus.toml", _STUDY.format(name="ctl")
                                              + 'control = "shuffled"\n'),
}

CASES = [
    # ---- train: names -------------------------------------------------------------------------------
    ("train-task-unknown", "train --task moons --out {out}", "unknown task 'moons'"),
    ("train-regime-unknown", "train --task two-moons --regime bimtx --out {out}", "unknown regime 'bimtx'"),
    ("train-activation-unknown", "train --task two-moons --activation swish --out {out}", "unknown activation 'swish'"),
    ("train-agg-unknown", "train --task two-moons --agg median --out {out}", "agg='median'"),
    ("train-device-unknown", "train --task two-moons --device gpu0 --out {out}", "device='gpu0'"),
    ("train-set-unknown", "train --task two-moons --set bogus_key=1 --out {out}", "unknown hyperparameter 'bogus_key'"),
    ("train-set-format", "train --task two-moons --set steps --out {out}", "--set 'steps' must look like key=value"),
    # ---- train: numbers -----------------------------------------------------------------------------
    ("train-seed-negative", "train --task two-moons --seed -1 --out {out}", "seed -1 is out of range; give an integer 0..4294967295"),
    ("train-seed-20-digits", "train --task two-moons --seed 12345678901234567890 --out {out}", "seed 12345678901234567890 is out of range"),
    ("train-lr-text", "train --task two-moons --lr abc --out {out}", "--lr"),
    ("train-lr-negative", "train --task two-moons --lr -1 --out {out}", "lr=-1.0"),
    ("train-lr-zero", "train --task two-moons --lr 0 --out {out}", "lr=0.0"),
    ("train-lr-huge", "train --task two-moons --lr 1e30 --out {out}", "lr=1e+30: give a finite number in (0, 10]"),
    ("train-lr-inf", "train --task two-moons --lr inf --out {out}", "lr=inf: Input should be a finite number"),
    ("train-lam-huge", "train --task two-moons --lam 1e300 --out {out}", "lam=1e+300: give a finite number in [0, 10000]"),
    ("train-lam-nan", "train --task two-moons --lam nan --out {out}", "lam=nan"),
    ("train-lam-negative", "train --task two-moons --lam -0.1 --out {out}", "lam=-0.1"),
    ("train-l0-huge", "train --task two-moons --l0 1e9 --out {out}", "l0=1000000000.0: give a finite number in [0, 10000]"),
    ("train-weight-factor-huge", "train --task two-moons --weight-factor 1e300 --out {out}", "weight_factor=1e+300"),
    ("train-weight-factor-negative", "train --task two-moons --weight-factor -1 --out {out}", "weight_factor=-1.0"),
    ("train-schedule-multiplier", "train --task two-moons --set lam_schedule=[[0.5,1e300]] --out {out}", "lam_schedule"),
    ("train-steps-huge", "train --task two-moons --steps 99999999999999999999 --out {out}", "steps=99999999999999999999: Input should be less than or equal to 100000000"),
    ("train-steps-zero", "train --task two-moons --steps 0 --out {out}", "steps=0"),
    ("train-batch-zero", "train --task two-moons --batch-size 0 --out {out}", "batch_size=0"),
    ("train-swap-every-zero", "train --task two-moons --swap-every 0 --out {out}", "swap_every=0"),
    ("train-top-k-zero", "train --task two-moons --top-k 0 --out {out}", "top_k=0"),
    ("train-threads-zero", "train --task two-moons --threads 0 --out {out}", "threads 0 is out of range; give an integer 1..1024"),
    ("train-threads-huge", "train --task two-moons --threads 100000 --out {out}", "threads 100000 is out of range"),
    ("train-widths-text", "train --task two-moons --widths 2,x,2 --out {out}", "--widths '2,x,2'"),
    ("train-widths-misfit", "train --task two-moons --widths 3,20,2 --out {out}", "widths [3, 20, 2] do not fit task two-moons"),
    ("train-widths-zero", "train --task two-moons --widths 2,0,2 --out {out}", "widths [2, 0, 2] must be positive"),
    ("train-widths-huge", "train --task two-moons --widths 2,100000000,2 --out {out}", "widths 2,100000000,2 give 500,000,002 parameters (widest layer 100,000,000); the limit is 10,000,000"),
    ("train-max-parameters-zero", "train --task two-moons --max-parameters 0 --out {out}", "max_parameters 0 is out of range"),
    ("train-out-missing", "train --task two-moons", "--out"),
    # ---- discover: options --------------------------------------------------------------------------
    ("discover-method-unknown", "discover {run} --method acdx --out {out}", "unknown method 'acdx'"),
    ("discover-metric-unknown", "discover {run} --metric l1 --out {out}", "unknown metric 'l1'; allowed: kl, logit-diff, mse"),
    ("discover-ablation-unknown", "discover {run} --ablation noise --out {out}", "unknown ablation 'noise'"),
    ("discover-precision-unknown", "discover {run} --precision float16 --out {out}", "unknown precision 'float16'"),
    ("discover-threshold-negative", "discover {run} --threshold -0.5 --out {out}", "threshold -0.5 is not allowed; give a finite number >= 0"),
    ("discover-threshold-nan", "discover {run} --threshold nan --out {out}", "threshold nan is not allowed"),
    ("discover-threshold-inf", "discover {run} --threshold inf --out {out}", "threshold inf is not allowed"),
    ("discover-examples-negative", "discover {run} --examples -1 --out {out}", "examples -1 is out of range; give an integer >= 1"),
    ("discover-examples-zero", "discover {run} --examples 0 --out {out}", "examples 0 is out of range"),
    ("discover-top-k-above-edges", "discover {run} --top-k 100000 --out {out}", "top_k 100000 is out of range; give an integer 1..480"),
    ("discover-top-k-zero", "discover {run} --top-k 0 --out {out}", "top_k 0 is out of range; give an integer 1..480"),
    ("discover-top-k-negative", "discover {run} --method eap --top-k -3 --out {out}", "top_k -3 is out of range"),
    ("discover-split-qkv-mlp", "discover {run} --split-qkv --out {out}", "--split-qkv is for transformer runs"),
    ("discover-run-missing", "discover {missing} --out {out}", "missing"),
    # ---- discover: data files -----------------------------------------------------------------------
    ("discover-data-missing", "discover {run} --data {missing}.npz --out {out}", "does not exist"),
    ("discover-data-npy", "discover {run} --data {npz[x.npy]} --out {out}", "(a .npy); give a .npz with arrays 'clean' and 'corrupt'"),
    ("discover-data-garbage", "discover {run} --data {npz[garbage.npz]} --out {out}", "is not a readable .npz"),
    ("discover-data-no-corrupt", "discover {run} --data {npz[no-corrupt.npz]} --out {out}", "it needs 'clean' and 'corrupt'"),
    ("discover-data-shapes-differ", "discover {run} --data {npz[mismatch.npz]} --out {out}", "clean has shape (50, 2), corrupt (40, 2); they must match"),
    ("discover-data-empty", "discover {run} --data {npz[empty.npz]} --out {out}", "clean holds no examples"),
    ("discover-data-strings", "discover {run} --data {npz[strings.npz]} --out {out}", "numbers are needed"),
    ("discover-data-nan", "discover {run} --data {npz[nan.npz]} --out {out}", "clean holds nan at index (3, 1); inputs must be finite numbers"),
    ("discover-data-inf", "discover {run} --data {npz[inf.npz]} --out {out}", "corrupt holds inf at index (1, 1)"),
    ("discover-data-huge", "discover {run} --data {npz[huge.npz]} --out {out}", "clean holds 1e+300 at index (2, 1); inputs must lie within +-1e+06"),
    ("discover-data-shape-3d", "discover {run} --data {npz[shape3.npz]} --out {out}", "clean has shape (50, 2, 1); this model takes shape (N, 2)"),
    ("discover-data-width", "discover {run} --data {npz[width3.npz]} --out {out}", "clean has shape (50, 3); this model takes shape (N, 2)"),
    ("discover-labels-float", "discover {run} --data {npz[float-labels.npz]} --out {out}", "labels have dtype float64; this is a classification model: labels must be integers in [0, 2)"),
    ("discover-labels-nan", "discover {run} --data {npz[nan-labels.npz]} --out {out}", "labels must be integers in [0, 2)"),
    ("discover-labels-out-of-range", "discover {run} --data {npz[label-7.npz]} --out {out}", "labels hold 7 at index 4; classes must lie in [0, 2)"),
    ("discover-labels-count", "discover {run} --data {npz[labels-short.npz]} --out {out}", "10 labels for 50 examples"),
    ("discover-tokens-float", "discover {token_run} --data {npz[float-tokens.npz]} --out {out}", "clean has dtype float64; this model takes token ids of shape (N, 2): integers in [0, 59)"),
    ("discover-tokens-out-of-range", "discover {token_run} --data {npz[token-99.npz]} --out {out}", "clean holds token id 99 at index (5, 0); token ids must lie in [0, 59)"),
    ("discover-tokens-width", "discover {token_run} --data {npz[ok.npz]} --out {out}", "this model takes token ids"),
    ("discover-weights-nan", "discover {nan_run} --out {out}", "linears.1.weight"),
    # ---- evaluate -----------------------------------------------------------------------------------
    ("evaluate-circuit-missing", "evaluate {run} {missing}.json", "missing"),
    ("evaluate-labels-out-of-range", "evaluate {run} {circuit} --data {npz[label-7.npz]} --json", "labels hold 7 at index 4; classes must lie in [0, 2)"),
    ("evaluate-labels-negative", "evaluate {run} {circuit} --data {npz[label-neg.npz]}", "labels hold -1 at index 9"),
    ("evaluate-labels-float", "evaluate {run} {circuit} --data {npz[float-labels.npz]}", "labels have dtype float64"),
    ("evaluate-data-nan", "evaluate {run} {circuit} --data {npz[nan.npz]} --json", "clean holds nan at index (3, 1)"),
    ("evaluate-data-huge", "evaluate {run} {circuit} --data {npz[huge.npz]} --json", "inputs must lie within +-1e+06"),
    ("evaluate-data-npy", "evaluate {run} {circuit} --data {npz[x.npy]}", "give a .npz"),
    ("evaluate-weights-nan", "evaluate {nan_run} {circuit} --json", "linears.1.weight"),
    # ---- files that must prove what they are (checkpoint hash and schema, circuit schema, fingerprint) --
    ("discover-checkpoint-flipped-byte", "discover {bad[flipped-byte]} --out {out}", "SHA-256"),
    ("evaluate-checkpoint-flipped-byte", "evaluate {bad[flipped-byte]} {circuit}", "SHA-256"),
    ("discover-checkpoint-seed-zero", "discover {bad[seed-zero]} --out {out}", "seed='zero' is not allowed; expected an integer"),
    ("discover-checkpoint-regime-bogus", "discover {bad[regime-bogus]} --out {out}", "unknown regime 'bogus'"),
    ("draw-checkpoint-version-99", "draw {bad[checkpoint-v99]} -o {out}.png", "unknown checkpoint version 99"),
    ("evaluate-circuit-kept-yes", "evaluate {run} {bad[kept-yes.json]}", "edges[3].kept='yes'"),
    ("evaluate-circuit-edge-twice", "evaluate {run} {bad[edge-twice.json]}", "repeats edges[0]"),
    ("evaluate-circuit-n-kept-wrong", "evaluate {run} {bad[n-kept-wrong.json]}", "disagrees with the edges"),
    ("draw-circuit-version-99", "draw {run} --circuit {bad[circuit-v99.json]} -o {out}.png", "unknown circuit file version 99"),
    ("evaluate-circuit-of-another-model", "evaluate {run} {other_circuit}", "another model"),
    # ---- evaluate: head-level ground truth ----------------------------------------------------------
    ("evaluate-truth-missing", "evaluate {tf_run} {tf_circuit} --truth {missing}.json", "does not exist"),
    ("evaluate-truth-not-json", "evaluate {tf_run} {tf_circuit} --truth {bad[truth-garbage.json]}", "is not valid JSON"),
    ("evaluate-truth-not-a-record", "evaluate {tf_run} {tf_circuit} --truth {bad[truth-no-edges.json]}", "not a ground-truth record"),
    ("evaluate-truth-backwards", "evaluate {tf_run} {tf_circuit} --truth {bad[truth-backwards.json]}", "A1.0->A0.1.q goes backwards"),
    ("evaluate-truth-other-size", "evaluate {tf_run} {tf_circuit} --truth {bad[truth-3x2.json]} --json", "the ground truth is for 3 layers x 2 heads, the graph has 2 x 2"),
    ("evaluate-truth-for-mlp", "evaluate {run} {circuit} --truth {bad[truth-2x2.json]}", "applies to transformer circuits"),
    ("evaluate-require-truth-none", "evaluate {tf_run} {tf_circuit} --require-truth --json", "no head-level ground truth for this model"),
    ("evaluate-require-truth-mlp", "evaluate {run} {circuit} --require-truth", "this circuit is an MLP's"),
    ("draw-circuit-of-another-model", "draw {run} --circuit {other_circuit} -o {out}.png", "another model"),
    # ---- outputs never destroy what modcircuit did not write ---------------------------------------
    ("train-out-user-folder", "train --task two-moons --steps 5 --out {bad[precious]}", "precious"),
    ("train-out-user-folder-overwrite", "train --task two-moons --steps 5 --out {bad[precious]} --overwrite", "precious"),
    ("train-out-user-file", "train --task two-moons --steps 5 --out {bad[afile.txt]} --overwrite", "afile.txt"),
    ("train-out-cwd", "train --task two-moons --steps 5 --out .", "is the current folder, which is never replaced"),
    ("discover-out-existing-folder", "discover {run} --out {bad[precious]}", "precious"),
    ("discover-out-user-file", "discover {run} --out {bad[afile.txt]} --overwrite", "afile.txt"),
    ("draw-out-user-file", "draw {run} -o {bad[afile.txt]}", "afile.txt"),
    ("report-out-user-folder", "report {missing}.duckdb -o {bad[precious]} --overwrite", "precious"),
    # ---- studies and results files ------------------------------------------------------------------
    ("report-results-garbage", "report {bad[garbage.duckdb]} -o {out}", "garbage.duckdb"),
    ("study-name-unsafe", "study run {bad[evil-name.toml]} --dry-run --no-estimate", "study name '../../evil' is not a safe file name"),
    ("study-metric-unknown", "study run {bad[metric-foo.toml]} --dry-run --no-estimate", "unknown metric 'foo'"),
    ("study-widths-misfit", "study run {bad[bad-widths.toml]} --dry-run --no-estimate", "widths [2, 8, 3] do not fit task two-moons"),
    ("study-key-unknown", "study run {bad[unknown-key.toml]} --dry-run --no-estimate", "seedz"),
    ("train-set-optimizer-unknown", "train --task two-moons --set optimizer=sgd --out {out}", "optimizer='sgd'"),
    ("study-control-unknown", "study run {bad[control-bogus.toml]} --dry-run --no-estimate",
     "unknown control 'shuffled'; allowed: none, permuted-labels"),
    # ---- commands -----------------------------------------------------------------------------------
    ("command-unknown", "trian", "trian"),
    # ---- tracr --------------------------------------------------------------------------------------
    ("tracr-program-unknown", "tracr revers --out {out}", "unknown tracr program 'revers'; allowed: frac_prevs, histogram, neighbours, reverse, sort"),
    ("tracr-seed-negative", "tracr reverse --seed -1 --out {out}", "-1"),
    # ---- induction task options ---------------------------------------------------------------------
    ("train-induction-vocab-small", "train --task induction --task-option vocab=19 --out {out}",
     "vocab 19 is too small: induction sequences need >= 20 tokens"),
    ("train-induction-seq-len-short", "train --task induction-attn-only --task-option seq_len=14 --out {out}",
     "seq_len 14 is too short: an induction sequence needs >= 16 positions"),
    ("train-induction-seq-len-odd", "train --task induction --task-option seq_len=21 --out {out}",
     "seq_len 21 must be even"),
    ("train-induction-min-repeat", "train --task induction --task-option min_repeat=1 --out {out}",
     "min_repeat 1 must be in 2..12"),
    ("train-induction-vocab-distinct", "train --task induction --task-option vocab=20 --task-option seq_len=32 --out {out}",
     "vocab 20 is too small for distinct tokens"),
]


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def _save_with_nan_weight(run, folder: Path) -> None:
    """A checkpoint whose file hash is consistent but which holds one NaN weight: save() refuses NaN, so the
    tensor is changed after saving and model.json's SHA-256 rewritten to match (what a diverged run written
    by an older version, or by hand, looks like)."""
    import json

    from safetensors.torch import load_file, save

    run.save(folder)
    state = load_file(str(folder / "model.safetensors"))
    state["linears.1.weight"][3, 4] = float("nan")
    data = save(state)
    (folder / "model.safetensors").write_bytes(data)
    meta = json.loads((folder / "model.json").read_text())
    meta["safetensors_sha256"] = hashlib.sha256(data).hexdigest()
    (folder / "model.json").write_text(json.dumps(meta, indent=1))


@pytest.fixture(scope="session")
def fixtures(tmp_path_factory):
    """The shared files of the table, built once (in-process, a few seconds)."""
    root = tmp_path_factory.mktemp("bad-inputs")
    run = mc.train("two-moons", "vanilla", seed=0, steps=20)
    run.save(root / "run")
    mc.train("modular-addition", "vanilla", seed=0, steps=2).save(root / "token_run")
    _save_with_nan_weight(run, root / "nan_run")
    assert main(["discover", str(root / "run"), "--method", "eap", "--out", str(root / "circuit.json"), "--json"]) == 0
    mc.train("two-moons", "vanilla", seed=1, steps=20).save(root / "other_run")  # same widths, other weights
    assert main(["discover", str(root / "other_run"), "--method", "eap", "--out", str(root / "other_circuit.json"),
                 "--json"]) == 0
    tf_task = mc.get_task("incontext-regression", seed=0, n_train=64, n_test=32, d_model=16, n_heads=2, d_head=4,
                          d_mlp=16)
    mc.train(tf_task, "vanilla", seed=0, steps=2).save(root / "tf_run")
    assert main(["discover", str(root / "tf_run"), "--method", "eap", "--split-qkv", "--examples", "16",
                 "--out", str(root / "tf_circuit.json"), "--json"]) == 0
    bad = {name: str(build(root)) for name, build in BROKEN.items()}
    g = np.random.default_rng(0)
    npz = {}
    for name, make in DATA.items():
        arrays, path = make(g), root / name
        if isinstance(arrays, bytes):
            path.write_bytes(arrays)
        elif isinstance(arrays, dict):
            np.savez(path, **arrays)
        else:
            np.save(path, arrays)
            path = path.with_suffix(".npy")
        npz[name] = str(path)
    paths = dict(run=root / "run", token_run=root / "token_run", nan_run=root / "nan_run",
                 circuit=root / "circuit.json", other_circuit=root / "other_circuit.json", npz=npz, bad=bad,
                 tf_run=root / "tf_run", tf_circuit=root / "tf_circuit.json",
                 missing=root / "missing")
    return root, {k: (str(v) if isinstance(v, Path) else v) for k, v in paths.items()}


def test_case_ids_are_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("argv,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_nothing_written(fixtures, tmp_path, monkeypatch, capsys, argv, fragment):
    root, paths = fixtures
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # a default output (circuit.json) would land here
    before = _digest(root)
    capsys.readouterr()
    code = main(shlex.split(argv.format(**paths, out=work / "out")))
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], lines[0]
    assert list(work.iterdir()) == [], "something was written"
    assert _digest(root) == before, "a fixture file changed"

