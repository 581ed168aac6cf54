"""RASP programs (Weiss et al. 2021, "Thinking Like Transformers") written for the tracr compiler
(Lindner et al. 2023), each with the inputs it is defined on.

Every program is written here from the papers' definitions:

  reverse     length - indices - 1 is the position each token goes to; select the key whose index is
              the query's opposite index, aggregate the tokens (RASP paper, section 3).
  frac_prevs  the fraction of tokens so far that are "x": a numerical aggregate (mean) of
              token == "x" over the keys at or before the query (RASP paper's frac_prevs; numerical
              output, one value per position).
  sort        sort of distinct tokens: each token's target position is the number of smaller tokens
              (a selector width), then every position fetches the token whose target is its index.
  histogram   how often each position's token occurs in the sequence: the width of the selector
              "same token".
  neighbours  whether a token's left and right neighbours (cyclically) are equal: two aggregates in one
              attention layer (two heads; tracr pads the empty layer 0 attention with zero heads), then
              a sequence map comparing them.

`SPECS[name]` gives the program's builder, vocabulary, sequence length and whether its valid inputs
must have distinct tokens (sort). Inputs are always full length (the patching graph needs one length).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import ModcircuitError

TRACR_EXTRA = "pip install 'modcircuit[tracr]' (tracr-pypi, jax on CPU)"


def import_rasp():
    """tracr's RASP module, or a one-line error naming the extra."""
    try:
        from tracr.rasp import rasp
    except ImportError as e:
        raise ModcircuitError(f"tracr is not installed ({e}); install the extra: {TRACR_EXTRA}") from None
    return rasp


def _length(rasp):
    """length as a selector width: every query selects every key (the RASP primitive `length`)."""
    return rasp.SelectorWidth(rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.TRUE)).named("length")


def reverse_program():
    rasp = import_rasp()
    length = _length(rasp)
    opposite = rasp.SequenceMap(lambda n, i: n - i - 1, length, rasp.indices).named("opposite_index")
    flip = rasp.Select(rasp.indices, opposite, rasp.Comparison.EQ).named("flip")
    return rasp.Aggregate(flip, rasp.tokens).named("reverse")


def frac_prevs_program():
    rasp = import_rasp()
    is_x = rasp.numerical(rasp.Map(lambda t: 1 if t == "x" else 0, rasp.tokens)).named("is_x")
    prevs = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LEQ).named("prevs")
    return rasp.numerical(rasp.Aggregate(prevs, is_x, default=0)).named("frac_prevs")


def sort_program():
    rasp = import_rasp()
    smaller = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.LT).named("smaller")
    target = rasp.SelectorWidth(smaller).named("target_position")
    fetch = rasp.Select(target, rasp.indices, rasp.Comparison.EQ).named("fetch")
    return rasp.Aggregate(fetch, rasp.tokens).named("sort")


def histogram_program():
    rasp = import_rasp()
    same = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ).named("same_token")
    return rasp.SelectorWidth(same).named("histogram")


def neighbours_program(n: int):
    rasp = import_rasp()
    left = rasp.Map(lambda i: (i - 1) % n, rasp.indices).named("left_index")
    right = rasp.Map(lambda i: (i + 1) % n, rasp.indices).named("right_index")
    left_tok = rasp.Aggregate(rasp.Select(rasp.indices, left, rasp.Comparison.EQ), rasp.tokens).named("left_token")
    right_tok = rasp.Aggregate(rasp.Select(rasp.indices, right, rasp.Comparison.EQ), rasp.tokens).named("right_token")
    return rasp.SequenceMap(lambda a, b: int(a == b), left_tok, right_tok).named("neighbours")


@dataclass(frozen=True)
class ProgramSpec:
    build: Callable  # () -> the RASP program (an SOp)
    vocab: tuple
    seq_len: int  # positions after BOS; every input has exactly this many tokens
    distinct: bool = False  # valid inputs have pairwise different tokens
    description: str = ""


SPECS = {
    "reverse": ProgramSpec(reverse_program, (1, 2, 3), 4, description="the tokens in reverse order"),
    "frac_prevs": ProgramSpec(frac_prevs_program, ("a", "b", "x"), 4,
                              description="fraction of tokens so far that are x (numerical)"),
    "sort": ProgramSpec(sort_program, (1, 2, 3, 4, 5), 4, distinct=True,
                        description="the (distinct) tokens sorted ascending"),
    "histogram": ProgramSpec(histogram_program, (1, 2, 3), 4,
                             description="how often each position's token occurs"),
    "neighbours": ProgramSpec(lambda: neighbours_program(4), (1, 2, 3), 4,
                              description="whether each token's left and right neighbours (cyclic) are equal"),
}


def program_spec(name) -> ProgramSpec:
    if not isinstance(name, str) or name not in SPECS:
        raise ModcircuitError(f"unknown tracr program {name!r}; allowed: {', '.join(sorted(SPECS))}")
    return SPECS[name]
