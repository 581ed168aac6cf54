"""Our models to other tools and back (TransformerLens)."""
from .transformer_lens import from_transformer_lens, to_transformer_lens

__all__ = ["from_transformer_lens", "to_transformer_lens"]
