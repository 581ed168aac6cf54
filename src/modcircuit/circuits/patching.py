"""Running an MLP "as a circuit": an edge outside the circuit carries its source's ablated value.

For linear l with weight W, bias b, live input h (the circuit's own activations) and ablated input a:

    z = (M*W) @ h + ((1-M)*W) @ a + b   ==   a @ W.T + b + (h - a) @ (M*W).T

(the second form is what we compute: an edge whose source has h == a contributes exactly nothing, so
"no effect" is exactly zero). The ablated value of a source is
  resample: its activation in the corrupted run of the *full* model (standard ACDC),
  zero:     0,
  mean:     its activation in the clean run of the full model, averaged over the clean batch.
All of this works on positions (weight indices); `model.features` and `model.readout` translate.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ModcircuitError, choice_error
from ..tasks.base import ABLATIONS
from .graph import Graph, as_mlp
from .inputs import patching_inputs

METRICS = ("kl", "mse", "logit-diff")


# ---- metrics against the model (reduce the last two dims: examples, outputs) ----------------------
def logit_diff(out: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Per example, the logit of class c_b minus the mean logit: out [..., B, n_out], classes [B] -> [..., B]."""
    picked = out.gather(-1, classes.expand(*out.shape[:-1])[..., None])[..., 0]
    return picked - out.mean(-1)


def logit_diff_loss(out: torch.Tensor, target: torch.Tensor, classes: torch.Tensor | None) -> torch.Tensor:
    """Per example, the model's logit difference minus the circuit's toward `classes` (the model's own when
    None): out [..., B, n_out], target [B, n_out] -> [..., B]."""
    c = target.argmax(-1) if classes is None else classes
    return logit_diff(target, c) - logit_diff(out, c)


def divergence(metric: str, out: torch.Tensor, target: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
    """KL(model || circuit) averaged over examples (batchmean), mean squared error to the model, or
    "logit-diff": the model's mean logit difference minus the circuit's, toward `classes` (the labels, when
    the context has them; else the model's own classes) -- 0 for the model, negative when the circuit
    favours those classes more than the model does. `out` may carry leading candidate dims [..., B, n_out];
    `target` is [B, n_out]."""
    if metric == "kl":
        logp = F.log_softmax(target, -1)
        logq = F.log_softmax(out, -1)
        return (logp.exp() * (logp - logq)).sum(-1).mean(-1)
    if metric == "mse":
        return ((out - target) ** 2).mean((-1, -2))
    if metric == "logit-diff":
        return logit_diff_loss(out, target, classes).mean(-1)
    raise choice_error("metric", metric, METRICS)


def label_classes(labels, metric: str, n_out: int, device, positions_of=None) -> torch.Tensor | None:
    """The classes the logit-diff metric aims at: the labels (integers, one per example), moved to output
    positions by `positions_of` (an MLP whose outputs were swapped), or None (other metrics, or no labels:
    the model's own classes). Labels matter to no other metric, so they are read only for this one."""
    if metric != "logit-diff":
        return None
    if n_out < 2:
        raise ModcircuitError(f"metric 'logit-diff' needs a classification model; this one has {n_out} output")
    if labels is None:
        return None
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
        raise ModcircuitError("metric 'logit-diff' needs integer class labels; these are "
                              f"{str(labels.dtype).replace('torch.', '')}")
    classes = labels.long().reshape(-1)
    if len(classes) and (classes.min() < 0 or classes.max() >= n_out):
        raise ModcircuitError(f"labels hold classes {int(classes.min())}..{int(classes.max())}; they must lie in "
                              f"[0, {n_out})")
    if positions_of is not None:
        classes = positions_of[classes]
    return classes.to(device)


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise choice_error("metric", metric, METRICS)
    return metric


def check_ablation(ablation: str) -> str:
    if ablation not in ABLATIONS:
        raise choice_error("ablation", ablation, ABLATIONS)
    return ablation


def check_choice(metric: str | None, ablation: str) -> None:
    if metric is not None:
        check_metric(metric)
    check_ablation(ablation)


class PatchContext:
    """Everything a method needs about one model on one batch: float64 weights, the clean activations of
    the full model, the ablated values, the model's own outputs (the target) and the metric.

    Activations are in position space: h[l] is the input of linear l ([B, widths[l]]); a[l] the ablated
    value of the same sources ([B or 1, widths[l]]). `target` is the full model's output positions.
    """

    def __init__(self, model, clean, corrupt=None, *, metric: str = "kl", ablation: str = "resample",
                 labels=None, means: list[torch.Tensor] | None = None, dtype=torch.float64):
        check_choice(metric, ablation)
        self.model = as_mlp(model)
        self.metric_name = metric
        self.ablation = ablation
        self.dtype = dtype
        p = next(self.model.parameters())
        self.device = p.device
        clean, corrupt = patching_inputs(self.model, clean, corrupt, ablation, self.device)
        self.clean, self.corrupt, self.labels = clean, corrupt, labels
        # output position of class k: argsort(out_perm)[k] (readout's inverse)
        self.classes = label_classes(labels, metric, self.model.widths[-1], self.device,
                                     torch.argsort(self.model.out_perm).cpu())
        self.graph = Graph.of(self.model)
        self.L = self.model.n_linears
        with torch.no_grad():
            self.W = [lin.weight.detach().to(dtype) for lin in self.model.linears]
            self.b = [lin.bias.detach().to(dtype) for lin in self.model.linears]
            self.h = self.live(self._features(clean))
            self.target = self.h[-1]
            if not torch.isfinite(self.target).all():  # finite inputs and weights can still overflow
                row = int(torch.nonzero(~torch.isfinite(self.target).all(-1))[0])
                raise ModcircuitError(f"the model's outputs on clean example {row} are not finite; its inputs or "
                                      "weights are too large for meaningful scores")
            self.h = self.h[:-1]
            if ablation == "resample":
                self.a = self.live(self._features(corrupt))[:-1]
            elif ablation == "zero":
                self.a = [torch.zeros(1, w, dtype=dtype, device=self.device) for w in self.model.widths[:-1]]
            else:
                if means is None:
                    means = [h.mean(0) for h in self.h]
                self.a = [m.to(self.device, dtype).reshape(1, -1) for m in means]
                if [x.shape[1] for x in self.a] != self.model.widths[:-1]:
                    raise ModcircuitError("the circuit's stored mean activations do not fit the model's widths")
        self.forward_passes = 0

    @property
    def batch(self) -> int:
        return len(self.clean)

    @property
    def means(self) -> list[torch.Tensor] | None:
        return [a.reshape(-1).cpu() for a in self.a] if self.ablation == "mean" else None

    def widened(self) -> "PatchContext":
        """This context in float64: the same model, inputs, labels and ablated values (a float32 context's
        means are kept as computed), its activations recomputed in float64 (see the compiled ACDC kernel)."""
        if self.dtype == torch.float64:
            return self
        return PatchContext(self.model, self.clean, self.corrupt, metric=self.metric_name, ablation=self.ablation,
                            labels=self.labels, means=self.means, dtype=torch.float64)

    def _features(self, x):
        try:
            return self.model.features(x).to(self.dtype)
        except ModcircuitError:
            raise
        except (RuntimeError, IndexError) as e:
            raise ModcircuitError(f"inputs of shape {tuple(x.shape)} do not fit the model: {str(e).splitlines()[0]}")

    def live(self, h0: torch.Tensor) -> list[torch.Tensor]:
        """Full-model forward from neuron layer 0; returns [h_0, ..., h_{L-1}, output positions]."""
        hs = [h0]
        for l in range(self.L):
            z = hs[-1] @ self.W[l].T + self.b[l]
            hs.append(self.model.act(l + 1, z) if l + 1 < self.L else z)
        return hs

    def pre(self, l: int, h: torch.Tensor, weff: torch.Tensor) -> torch.Tensor:
        """Pre-activation of neuron layer l+1 given live input h and effective weights M*W."""
        a = self.a[l]
        return a @ self.W[l].T + self.b[l] + (h - a) @ weff.T

    def forward(self, masks, start: int = 0, h=None) -> torch.Tensor:
        """Output positions of the circuit `masks` (bool or float, one per linear). Differentiable in float masks."""
        self.forward_passes += 1
        h = self.h[0] if h is None else h
        for l in range(start, self.L):
            m = masks[l].to(self.dtype) if masks[l].dtype == torch.bool else masks[l]
            z = self.pre(l, h, m * self.W[l])
            h = self.model.act(l + 1, z) if l + 1 < self.L else z
        return h

    def metric(self, out: torch.Tensor) -> torch.Tensor:
        return divergence(self.metric_name, out, self.target, self.classes)

    def divergence(self, metric: str, out: torch.Tensor) -> torch.Tensor:
        """KL, MSE or logit-diff of outputs `out` to the model's."""
        return divergence(metric, out, self.target, self.classes)

    def full_masks(self, value: bool = True) -> list[torch.Tensor]:
        return [torch.full(s, value, dtype=torch.bool, device=self.device) for s in self.graph.shapes]

    def outputs(self, masks) -> torch.Tensor:
        """Circuit outputs in the model's original output order."""
        with torch.no_grad():
            return self.model.readout(self.forward(masks))


PRECISIONS = {"float64": torch.float64, "float32": torch.float32}


def check_dtype(dtype, what: str = "dtype") -> torch.dtype:
    """The precision of the patched runs: torch.float64 (default) or torch.float32, or their names."""
    if isinstance(dtype, str) and dtype in PRECISIONS:
        return PRECISIONS[dtype]
    if isinstance(dtype, torch.dtype) and dtype in PRECISIONS.values():
        return dtype
    raise choice_error(what, str(dtype).replace("torch.", ""), PRECISIONS)


def check_threshold(threshold) -> float:
    if isinstance(threshold, bool):
        raise ModcircuitError(f"threshold {threshold!r} is not a number; give a number >= 0")
    if not isinstance(threshold, (int, float)):
        try:
            threshold = float(threshold)
        except (TypeError, ValueError):
            raise ModcircuitError(f"threshold {threshold!r} is not a number; give a number >= 0")
    threshold = float(threshold)
    if math.isnan(threshold) or threshold < 0 or math.isinf(threshold):
        raise ModcircuitError(f"threshold {threshold} is not allowed; give a finite number >= 0")
    return threshold
