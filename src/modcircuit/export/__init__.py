"""Exports of our models to other tools (TransformerLens)."""
from .transformer_lens import to_transformer_lens

__all__ = ["to_transformer_lens"]
