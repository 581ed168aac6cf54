"""The `tracr` task: a compiled RASP program's model, its valid inputs, and its known circuit.

    model, truth, task = mc.tracr_model("reverse")
    circuit = mc.discover(model, task, method="acdc")   # metric over every position after BOS

Inputs are every valid sequence of the program's vocabulary and length (BOS first; for sort, distinct
tokens), shuffled by the seed and split in halves (train, test); nothing is trained, the split only
gives discovery and evaluation disjoint inputs. Corrupted inputs are other valid sequences (Task's
derangement of the split). Labels are the RASP program's own output at the last position, computed by
tracr's RASP evaluator (not by the compiled model), so the task's accuracy checks the compilation.
The circuit metric reads every position after BOS (`metric_positions`): KL for categorical programs,
MSE for numerical ones (frac_prevs).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from ..errors import ModcircuitError
from ..tasks.base import Task, register_task
from .programs import import_rasp, program_spec


@dataclass
class TracrTask(Task):
    program: str = ""

    def check_size(self, widths=None, max_parameters=None) -> None:
        """The model's size is the compiled program's."""

    def build_model(self, widths=None, activation=None):
        if widths or activation:
            raise ModcircuitError(f"task tracr compiles its model from the RASP program {self.program!r}: "
                                  f"widths and activation do not apply")
        from .compiled import compile_program, to_geometric

        return to_geometric(compile_program(self.program))

    def metric_positions(self, x: torch.Tensor):
        """Every position after BOS: each carries the program's output."""
        return list(range(1, x.shape[1]))

    def head_truth_for(self, model):
        from .compiled import head_truth

        return head_truth(model)


def valid_sequences(name: str) -> list[tuple]:
    spec = program_spec(name)
    if spec.distinct:
        return list(itertools.permutations(spec.vocab, spec.seq_len))
    return list(itertools.product(spec.vocab, repeat=spec.seq_len))


@register_task("tracr", "a tracr-compiled RASP program (reverse, frac_prevs, sort, histogram, neighbours) with its "
                        "known circuit; needs the [tracr] extra", list_without_building=True)
def tracr_task(seed: int = 0, program: str = "histogram") -> TracrTask:
    from .compiled import compile_program, encode, output_names

    spec = program_spec(program)
    assembled = compile_program(program)
    rasp = import_rasp()
    seqs = valid_sequences(program)
    order = torch.randperm(len(seqs), generator=torch.Generator().manual_seed(int(seed))).tolist()
    seqs = [seqs[i] for i in order]
    x = encode(assembled, seqs)
    sop = spec.build()
    last = [rasp.evaluate(sop, list(s))[-1] for s in seqs]
    numerical = rasp.is_numerical(sop)
    if numerical:
        y = torch.tensor(last, dtype=torch.float32)[:, None]
    else:
        enc = assembled.output_encoder.encoding_map
        y = torch.tensor([enc[v] for v in last], dtype=torch.long)
    d_out = 1 if numerical else len(assembled.output_encoder.encoding_map)
    half = len(seqs) // 2
    ids = assembled.input_encoder.encoding_map
    return TracrTask(
        name="tracr", kind="regression" if numerical else "classification", x_train=x[:half], y_train=y[:half],
        x_test=x[half:], y_test=y[half:], widths=[len(ids), d_out], loss="mse" if numerical else "ce",
        activation="relu", input_names=[str(v) for v, _ in sorted(ids.items(), key=lambda kv: kv[1])],
        output_names=output_names(assembled, program, d_out), seed=seed, program=program,
        description=f"tracr {program}: {spec.description} ({len(spec.vocab)} tokens, length {spec.seq_len})")


def tracr_model(program: str, seed: int = 0):
    """(GeometricTransformer, HeadTruth, Task) of a tracr-compiled RASP program (programs.SPECS)."""
    program_spec(program)  # an unknown name fails before anything is imported or compiled
    from ..tasks import get_task

    task = get_task("tracr", seed=seed, program=program)
    model = task.build_model()
    return model, task.head_truth_for(model), task
