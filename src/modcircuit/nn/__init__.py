"""Models with neuron geometry. MODEL_KINDS maps a checkpoint's model kind to its class."""
import torch

# Weight penalties push weights into denormal floats, which slows CPU math several-fold. Set here, where
# torch first loads for any model, task, training or discovery (the package root stays torch-free).
torch.set_flush_denormal(True)

from .mlp import MLP

MODEL_KINDS: dict[str, type] = {"mlp": MLP}


def model_from_config(cfg: dict):
    from ..errors import choice_error

    kind = cfg.get("kind", "mlp")
    if kind not in MODEL_KINDS:
        raise choice_error("model kind", kind, MODEL_KINDS)
    return MODEL_KINDS[kind].from_config(cfg)

from . import transformer  # noqa: E402,F401  (registers "transformer")
