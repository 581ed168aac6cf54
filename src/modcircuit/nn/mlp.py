"""A multilayer perceptron whose neurons have coordinates (the model every MLP task trains).

Layer indices: neuron layer 0 is the input features, neuron layer L the outputs; linear l maps
neuron layer l to neuron layer l+1. Two buffers keep meaning while BIMT swaps neurons:
  in_perm[p]  = which input feature sits at input position p   (forward reads features[:, in_perm])
  out_perm[k] = which output the neuron at output position k computes
With a learned embedding (modular tasks) the "features" are the concatenated token embeddings.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import ModcircuitError, choice_error
from . import geometry

ACTIVATIONS = {
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}
_ACTIVATION_NAMES = {cls: name for name, cls in ACTIVATIONS.items()}


class MLP(nn.Module):
    def __init__(
        self,
        widths: list[int],
        activation: str | list[str] = "silu",
        layouts: list[dict] | None = None,
        embedding: dict | None = None,
    ):
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) < 2 or any(w < 1 for w in widths):
            raise ModcircuitError(f"widths {widths} must list at least two positive layer sizes")
        n_hidden = len(widths) - 2
        acts = [activation] * n_hidden if isinstance(activation, str) else list(activation)
        if len(acts) != n_hidden:
            raise ModcircuitError(f"{len(acts)} activations given for {n_hidden} hidden layers")
        for a in acts:
            if a not in ACTIVATIONS:
                raise choice_error("activation", a, ACTIVATIONS)
        layouts = layouts or [geometry.default_layout(w) for w in widths]
        if len(layouts) != len(widths):
            raise ModcircuitError(f"{len(layouts)} layouts given for {len(widths)} neuron layers")
        for layout, w in zip(layouts, widths):
            geometry.check_layout(layout, w)
        self.widths = widths
        self.activation_names = acts
        self.layouts = [dict(l) for l in layouts]
        self.embedding_spec = dict(embedding) if embedding else None
        if embedding:
            vocab, dim, n_tokens = int(embedding["vocab"]), int(embedding["dim"]), int(embedding["n_tokens"])
            if dim * n_tokens != widths[0]:
                raise ModcircuitError(
                    f"embedding of {n_tokens} tokens x {dim} dims gives {dim * n_tokens} features, "
                    f"but the input width is {widths[0]}"
                )
            self.embedding = nn.Embedding(vocab, dim)
        else:
            self.embedding = None
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.acts = nn.ModuleList(ACTIVATIONS[a]() for a in acts)
        self.register_buffer("in_perm", torch.arange(widths[0]))
        self.register_buffer("out_perm", torch.arange(widths[-1]))
        for l, (layout, w) in enumerate(zip(self.layouts, widths)):
            self.register_buffer(f"coords_{l}", geometry.coordinates(layout, w).float(), persistent=False)
        for l in range(len(widths) - 1):
            # D[j, i]: distance from neuron i of layer l to neuron j of layer l+1 (the BIMT cost's geometry)
            self.register_buffer(f"dist_{l}", geometry.distances(self.coords(l + 1), self.coords(l)), persistent=False)

    # ---- structure -------------------------------------------------------------------------
    @property
    def n_linears(self) -> int:
        return len(self.linears)

    def coords(self, layer: int) -> torch.Tensor:
        return getattr(self, f"coords_{layer}")

    def cost_terms(self):
        """(weight, bias, distance) per linear map: what the BIMT connection cost is computed over."""
        return [(lin.weight, lin.bias, getattr(self, f"dist_{l}")) for l, lin in enumerate(self.linears)]

    def connections(self):
        """(source layer, target layer, weight [out, in]) per linear map: the graph of neurons."""
        return [(l, l + 1, lin.weight) for l, lin in enumerate(self.linears)]

    def folds(self, layer: int) -> int:
        return geometry.folds(self.layouts[layer])

    def config(self) -> dict:
        return {
            "kind": "mlp",
            "widths": self.widths,
            "activations": self.activation_names,
            "layouts": self.layouts,
            "embedding": self.embedding_spec,
        }

    @classmethod
    def from_config(cls, cfg: dict) -> "MLP":
        return cls(cfg["widths"], cfg["activations"], cfg["layouts"], cfg.get("embedding"))

    @classmethod
    def from_sequential(cls, seq: nn.Sequential, layouts: list[dict] | None = None) -> "MLP":
        """Import a plain nn.Sequential of Linear layers with one activation between consecutive Linears."""
        linears, acts, pending = [], [], None
        for i, m in enumerate(seq):
            if isinstance(m, nn.Linear):
                if linears:
                    acts.append(pending or "identity")
                linears.append(m)
                pending = None
            elif type(m) in _ACTIVATION_NAMES:
                if not linears or pending is not None:
                    raise ModcircuitError(f"layer {i} ({type(m).__name__}) must follow a Linear layer")
                pending = _ACTIVATION_NAMES[type(m)]
            else:
                raise ModcircuitError(
                    f"layer {i} is {type(m).__name__}; allowed: Linear and {', '.join(c.__name__ for c in _ACTIVATION_NAMES)}"
                )
        if not linears:
            raise ModcircuitError("the Sequential holds no Linear layer")
        if pending not in (None, "identity"):
            raise ModcircuitError("an activation after the last Linear is not supported: outputs must be logits")
        widths = [linears[0].in_features] + [l.out_features for l in linears]
        for a, b in zip(linears[:-1], linears[1:]):
            if a.out_features != b.in_features:
                raise ModcircuitError(f"Linear sizes do not chain: {a.out_features} -> {b.in_features}")
        model = cls(widths, acts, layouts)
        with torch.no_grad():
            for dst, src in zip(model.linears, linears):
                dst.weight.copy_(src.weight)
                if src.bias is not None:
                    dst.bias.copy_(src.bias)
                else:
                    dst.bias.zero_()
        return model.to(linears[0].weight.device)

    def clone(self) -> "MLP":
        return copy.deepcopy(self)

    # ---- forward ---------------------------------------------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Input positions (neuron layer 0) for a batch of raw inputs."""
        if self.embedding is not None:
            feats = self.embedding(x.long()).reshape(x.shape[0], -1)
        else:
            feats = x.reshape(x.shape[0], -1).to(self.linears[0].weight.dtype)
        if feats.shape[1] != self.widths[0]:
            raise ModcircuitError(f"inputs have {feats.shape[1]} features, the model expects {self.widths[0]}")
        return feats[:, self.in_perm]

    def act(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        """Activation of hidden neuron layer `layer` (1..L-1) from its pre-activation."""
        return self.acts[layer - 1](z)

    def readout(self, z: torch.Tensor) -> torch.Tensor:
        """Output positions -> outputs in their original order."""
        return z[:, torch.argsort(self.out_perm)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        for l, lin in enumerate(self.linears):
            z = lin(h)
            h = self.act(l + 1, z) if l + 1 < self.n_linears else z
        return self.readout(h)

    def layer_inputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """h_l, the input of linear l, for every l (h_0 = features)."""
        hs = [self.features(x)]
        for l, lin in enumerate(self.linears[:-1]):
            hs.append(self.act(l + 1, lin(hs[-1])))
        return hs
