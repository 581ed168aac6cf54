"""HeadTruth: names checked, masks in both graph layouts, a dict round trip."""
import pytest

from modcircuit.circuits.graph import TransformerGraph
from modcircuit.circuits.truth import HeadTruth
from modcircuit.errors import ModcircuitError


def test_mask_split_and_merged():
    t = HeadTruth(2, 2, {("A0.1", "A1.0.k"), ("embed", "A1.0.q"), ("A1.0", "output")})
    g = TransformerGraph(2, 2, split_qkv=True)
    m = t.mask(g)
    assert int(m.sum()) == 3
    assert m[g.dest_attn(1, 0, 1), g.src_head(0, 1)]
    assert m[g.dest_out, g.src_head(1, 0)]
    gm = TransformerGraph(2, 2, split_qkv=False)
    mm = t.mask(gm)
    assert int(mm.sum()) == 3 and mm[gm.dest_attn(1, 0), g.src_head(0, 1)] and mm[gm.dest_attn(1, 0), 0]


def test_merged_mask_collapses_qkv():
    t = HeadTruth(2, 1, {("A0.0", "A1.0.q"), ("A0.0", "A1.0.k")})
    assert int(t.mask(TransformerGraph(2, 1)).sum()) == 1


def test_bad_names_and_backward_edges():
    with pytest.raises(ModcircuitError, match="A5.0"):
        HeadTruth(2, 2, {("A5.0", "output")})
    with pytest.raises(ModcircuitError, match="backwards"):
        HeadTruth(2, 2, {("A1.0", "A0.1.q")})
    with pytest.raises(ModcircuitError, match="layers"):
        HeadTruth(2, 2, set()).mask(TransformerGraph(3, 2))


def test_dict_round_trip():
    t = HeadTruth(2, 2, {("A0.1", "A1.0.k")}, rule="by hand")
    assert HeadTruth.from_dict(t.to_dict()) == t
    with pytest.raises(ModcircuitError, match="ground-truth record"):
        HeadTruth.from_dict({"edges": []})
