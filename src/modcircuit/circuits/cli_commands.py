"""`modcircuit discover`, `evaluate`, `export-mib` and `import-mib` (registered by modcircuit/cli.py).

    modcircuit discover RUN --method acdc --threshold 0.01 [--data inputs.npz] --out circuit.json [--json]
    modcircuit evaluate RUN circuit.json [--data inputs.npz] [--json] [--allow-other-model]
                        [--truth truth.json] [--require-truth]   (transformers: AUC against a HeadTruth)
    modcircuit export-mib RUN circuit.json -o graph.json      (MIB / EAP-IG graph JSON, see circuits/mib.py)
    modcircuit import-mib RUN graph.json -o circuit.json [--merge-qkv] [--allow-other-model]

The npz holds `clean` and `corrupt` arrays of the same shape and optional `labels`; without --data the
run's task supplies resample pairs from its test split. Bad input raises ModcircuitError (one line, exit 2).
A circuit file found on another model than RUN is refused unless --allow-other-model (deliberate transfer).
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import typer

from ..errors import ModcircuitError
from ..jsonout import dumps
from .circuit import load_circuit
from .discover import discover, task_metric
from .inputs import check_labels, n_outputs
from .methods import method_names
from .metrics import evaluate
from .positions import parse_positions
from .patching import check_dtype


def load_npz(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ModcircuitError(f"data file {str(path)!r} does not exist")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a bare .npy array: which one is clean?
            raise ModcircuitError(f"data file {str(path)!r} holds one {type(loaded).__name__} (a .npy); give a .npz "
                                  "with arrays 'clean' and 'corrupt' (optional 'labels'), e.g. numpy.savez")
        with loaded as f:
            arrays = {k: f[k] for k in f.files}
    except ModcircuitError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise ModcircuitError(f"data file {str(path)!r} is not a readable .npz: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    missing = [k for k in ("clean", "corrupt") if k not in arrays]
    if missing:
        raise ModcircuitError(f"data file {str(path)!r} has arrays {sorted(arrays)}; it needs 'clean' and 'corrupt' (optional 'labels')")
    clean, corrupt = arrays["clean"], arrays["corrupt"]
    if clean.shape != corrupt.shape:
        raise ModcircuitError(f"data file {str(path)!r}: clean has shape {clean.shape}, corrupt {corrupt.shape}; they must match")
    if clean.ndim == 0 or len(clean) == 0:
        raise ModcircuitError(f"data file {str(path)!r}: clean holds no examples")
    for k, a in arrays.items():
        if a.dtype.kind not in "biuf":
            raise ModcircuitError(f"data file {str(path)!r}: array {k!r} has dtype {a.dtype}; numbers are needed")
    out = {"clean": torch.from_numpy(clean), "corrupt": torch.from_numpy(corrupt)}
    if "labels" in arrays:
        labels = torch.from_numpy(arrays["labels"])
        if len(labels) != len(clean):
            raise ModcircuitError(f"data file {str(path)!r}: {len(labels)} labels for {len(clean)} examples")
        out["labels"] = labels
    return out


def _load_run(run: Path, task_options: list[str] = (), device: str = "cpu"):
    """The run's model (on `device`) and task; `task_options` (key=value texts) change the task the run was
    trained on."""
    from ..tasks import get_task, parse_task_options
    from ..train import load

    r = load(run, device)
    if not task_options:
        try:
            return r.model, r.task()
        except ModcircuitError:
            return r.model, None  # e.g. the task's data files are missing here; --data still works
    options = {**r.task_options, **parse_task_options(r.task_name, list(task_options))}
    task = get_task(r.task_name, seed=r.seed, **options)
    _check_fits(r.model, task, task_options)
    return r.model, task


def _check_fits(model, task, task_options) -> None:
    """Refuse task options that give data the run's model cannot take (e.g. another modulus p)."""
    given = " ".join(f"--task-option {o}" for o in task_options)
    try:
        with torch.no_grad():
            outputs = model(task.x_test[:2].to(next(model.parameters()).device)).shape[-1]
    except (RuntimeError, IndexError, ModcircuitError) as e:
        raise ModcircuitError(f"{given}: the run's model cannot take this task's inputs ({str(e).splitlines()[0]})")
    if outputs != task.widths[-1]:
        raise ModcircuitError(f"{given}: the task then has {task.widths[-1]} outputs; the run's model has {outputs}")


def _data(model, task, data: Optional[Path]):
    if data is not None:
        arrays = load_npz(data)
        if "labels" in arrays:  # checked against the run's task (classes vs regression targets) when it is known
            arrays["labels"] = check_labels(arrays["labels"], len(arrays["clean"]), task.kind if task else None,
                                            n_outputs(model))
        return arrays
    if task is None:
        raise ModcircuitError("the run's task cannot be built here; give --data inputs.npz")
    return task


def discover_cmd(
    run: Path = typer.Argument(..., help="run folder (model.safetensors + model.json)"),
    method: str = typer.Option("acdc", "--method", help="discovery method: " + ", ".join(method_names())),
    threshold: float = typer.Option(0.01, "--threshold", help="ACDC tau / score cut-off / probing size weight (>= 0)"),
    data: Optional[Path] = typer.Option(None, "--data", help=".npz with clean, corrupt (same shape), optional labels"),
    out: Path = typer.Option(Path("circuit.json"), "--out", help="circuit JSON to write"),
    metric: Optional[str] = typer.Option(None, "--metric", help="kl | mse | logit-diff (default: the task's)"),
    ablation: str = typer.Option("resample", "--ablation", help="resample | zero | mean"),
    examples: Optional[int] = typer.Option(None, "--examples", help="use this many task test examples"),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="keep the k best-scored edges instead"),
    precision: str = typer.Option("float64", "--precision",
                                  help="float64 (default) | float32 (faster; what auto-circuit uses)"),
    split_qkv: bool = typer.Option(False, "--split-qkv", help="transformers: q, k and v inputs as separate receivers"),
    task_options: list[str] = typer.Option([], "--task-option", help="change an option of the run's task, "
                                                                     "key=value (see `modcircuit tasks`)"),
    positions: Optional[str] = typer.Option(None, "--positions",
                                            help="transformers: output positions the metric averages over: "
                                                 "last (default) | all | comma-separated indices (0,3,-1)"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N: where the model and the patched runs go"),
    json_output: bool = typer.Option(False, "--json", help="machine-readable output"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing output, only one modcircuit wrote"),
):
    """Discover the circuit of a trained model and write it as JSON."""
    from ..outputs import check_output
    from ..train.config import check_device

    check_output(out, "circuit", overwrite=overwrite)  # before any work
    dtype = check_dtype(precision, "precision")  # before any work
    check_device(device)
    positions = parse_positions(positions) if positions is not None else None
    model, task = _load_run(run, task_options, device)
    from ..nn.transformer import GeometricTransformer

    if split_qkv and not isinstance(model, GeometricTransformer):
        raise ModcircuitError(f"--split-qkv is for transformer runs; {str(run)!r} holds a {type(model).__name__}")
    source = _data(model, task, data)
    if metric is None:
        metric = task_metric(task) if task is not None else "kl"
    kwargs = dict(method=method, threshold=threshold, metric=metric, ablation=ablation, top_k=top_k, dtype=dtype)
    if split_qkv:
        kwargs["split_qkv"] = True
    if positions is not None:
        kwargs["positions"] = positions
    if hasattr(source, "patching_pairs"):
        kwargs["examples"] = examples
    if json_output:
        circuit = discover(model, source, **kwargs)
    else:
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            job = bar.add_task(f"{method}", total=None)
            circuit = discover(model, source, progress=lambda done, total: bar.update(job, completed=done, total=total),
                               **kwargs)
    circuit.save(out, overwrite=overwrite)
    summary = {"out": str(out), "method": circuit.method, "threshold": circuit.threshold, "metric": circuit.metric,
               "ablation": circuit.ablation, "n_edges": circuit.n_edges, "n_kept": circuit.n_kept,
               "seconds": circuit.seconds, "forward_passes": circuit.forward_passes}
    if json_output:
        typer.echo(dumps(summary))
    else:
        typer.echo(f"{method}: kept {circuit.n_kept}/{circuit.n_edges} edges in {circuit.seconds:.2f} s "
                   f"({circuit.forward_passes} forward passes) -> {out}")


def evaluate_cmd(
    run: Path = typer.Argument(..., help="run folder (model.safetensors + model.json)"),
    circuit_file: Path = typer.Argument(..., help="circuit JSON written by `modcircuit discover`"),
    data: Optional[Path] = typer.Option(None, "--data", help=".npz with clean, corrupt, optional labels"),
    task_options: list[str] = typer.Option([], "--task-option", help="change an option of the run's task, "
                                                                     "key=value (see `modcircuit tasks`)"),
    positions: Optional[str] = typer.Option(None, "--positions",
                                            help="transformers: output positions (default: the circuit's): "
                                                 "last | all | comma-separated indices"),
    json_output: bool = typer.Option(False, "--json", help="machine-readable output (every metric)"),
    allow_other_model: bool = typer.Option(False, "--allow-other-model",
                                           help="score a circuit found on another model with the same widths "
                                                "(deliberate transfer); refused by default"),
    truth: Optional[Path] = typer.Option(None, "--truth",
                                         help="transformers: a head-level ground truth (HeadTruth JSON: n_layers, "
                                              "n_heads, edges) to score against instead of the model's or task's"),
    require_truth: bool = typer.Option(False, "--require-truth",
                                       help="fail unless a head-level ground truth is known (AUC wanted)"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N: where the model and the patched runs go"),
):
    """Score a circuit: faithfulness, task accuracy, sparsity, cost, ground truth where known."""
    from ..train.config import check_device
    from .truth_scoring import load_head_truth

    check_device(device)
    positions = parse_positions(positions) if positions is not None else None
    head_truth = load_head_truth(truth) if truth is not None else None  # before any work
    model, task = _load_run(run, task_options, device)
    circuit = load_circuit(circuit_file, model, allow_other_model)
    report = evaluate(model, circuit, _data(model, task, data), positions=positions,
                      allow_other_model=allow_other_model, truth=head_truth, require_truth=require_truth)
    if json_output:
        typer.echo(dumps(report))
        return
    skip = {"curve", "mib_curve", "roc_edges", "roc_inputs", "roc_heads_qkv", "roc_heads_merged", "mib_roc"}
    for k, v in report.items():
        if k in skip or v is None:
            continue
        typer.echo(f"{k:18s} {v:.6g}" if isinstance(v, float) else f"{k:18s} {v}")


def export_mib_cmd(
    run: Path = typer.Argument(..., help="run folder of a transformer (model.safetensors + model.json)"),
    circuit_file: Path = typer.Argument(..., help="circuit JSON written by `modcircuit discover` on RUN"),
    out: Path = typer.Option(..., "-o", "--out", help="MIB / EAP-IG graph JSON to write"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing output, only one modcircuit wrote"),
):
    """Write a transformer circuit as a MIB / EAP-IG graph JSON (nodes input, a{l}.h{h}, m{l}, logits)."""
    from ..outputs import check_output
    from .mib import save_mib

    check_output(out, "mib", overwrite=overwrite)  # before any work
    model, _ = _load_run(run)
    circuit = load_circuit(circuit_file, model)
    save_mib(circuit, out, model, overwrite=overwrite)
    typer.echo(f"{circuit.n_kept}/{circuit.n_edges} edges kept ({'q, k, v apart' if circuit.graph.split_qkv else 'q, k, v merged, written three times'}) -> {out}")


def import_mib_cmd(
    run: Path = typer.Argument(..., help="run folder of the transformer the MIB graph is for"),
    mib_file: Path = typer.Argument(..., help="MIB / EAP-IG graph JSON (EAP-IG's Graph.to_json)"),
    out: Path = typer.Option(..., "-o", "--out", help="circuit JSON to write"),
    merge_qkv: bool = typer.Option(False, "--merge-qkv", help="merge each head's q, k, v inputs (they must agree)"),
    allow_other_model: bool = typer.Option(False, "--allow-other-model",
                                           help="accept a file exported from another model of the same shape"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing output, only one modcircuit wrote"),
):
    """Read a MIB / EAP-IG graph JSON as a circuit file of RUN's model (then `modcircuit evaluate` it)."""
    from ..outputs import check_output
    from .mib import load_mib

    check_output(out, "circuit", overwrite=overwrite)  # before any work
    model, _ = _load_run(run)
    circuit = load_mib(mib_file, model, split_qkv=False if merge_qkv else None, allow_other_model=allow_other_model)
    circuit.save(out, overwrite=overwrite)
    typer.echo(f"{circuit.n_kept}/{circuit.n_edges} edges kept -> {out}")
