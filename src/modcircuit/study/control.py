"""The nonsense-target control of a study (`control = "permuted-labels"`).

Discovery asked to explain a target the model does not compute should not return a small, faithful
circuit. For every circuit cell of a classification task the control adds two cells with the same
method and selection, both with the logit-difference metric (patching.divergence "logit-diff": the
logit of the target class minus the mean logit, EAP's objective "logit-diff" aiming at the same classes):

  target "labels"            the examples' true labels (the real target, to compare with), and
  target "permuted-labels"   the same labels moved across examples by a derangement fixed by
                             `control_seed` (inputs.permuted_labels): a target no circuit computes.

Both are scored against the labels they were found for (their faithfulness is the normalized logit
difference toward those labels). report/control.py tabulates them side by side and warns when the
nonsense target yields a tiny circuit that still looks faithful. Regression tasks have no classes and
get no control cells.
"""
from __future__ import annotations

import inspect

CONTROLS = ("permuted-labels",)
TARGETS = ("labels", "permuted-labels")
CONTROL_METRIC = "logit-diff"


def control_inputs(task, target: str, label_seed: int):
    """(clean, corrupt, labels) of a control cell: the task's patching pairs (as discovery takes them from
    the task), with the labels permuted across examples for the nonsense target."""
    from ..circuits.inputs import permuted_labels

    clean, corrupt, labels = task.patching_pairs("test")
    if target == "permuted-labels":
        labels = permuted_labels(labels, label_seed)
    return clean, corrupt, labels


def control_options(model, method: str) -> dict:
    """Method options that make a method aim at the control's labels: EAP-like methods differentiate an
    objective, which must be the logit difference too (ACDC follows the metric; magnitude ignores both)."""
    from ..circuits.kinds import graph_kind
    from ..circuits.methods import get_method

    fn = get_method(method, graph_kind(model).name)
    return {"objective": CONTROL_METRIC} if "objective" in inspect.signature(fn).parameters else {}
