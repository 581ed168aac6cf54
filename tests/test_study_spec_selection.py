"""Per-method selections: a method's own thresholds/edge counts replace the global ones for it."""
import pytest

from modcircuit.errors import ModcircuitError
from modcircuit.study.spec import parse_spec, plan

BASE = dict(name="sel", tasks=["two-moons"], regimes=["bimt"], seeds=[0], methods=["acdc", "eap"], thresholds=[0.01])


def test_method_selection_replaces_the_global_one_for_that_method():
    spec = parse_spec({**BASE, "method_selection": {"eap": {"edge_counts": [5, 10]}}})
    cells = plan(spec).circuits
    got = sorted((c.method, c.threshold, c.edge_count) for c in cells)
    assert got == [("acdc", 0.01, None), ("eap", None, 5), ("eap", None, 10)]


@pytest.mark.parametrize("bad,needle", [
    ({"method_selection": {"magnitude": {"edge_counts": [5]}}}, "[method_selection.magnitude] names a method"),
    ({"method_selection": {"eap": {"edge_counts": [0]}}}, "edge count 0 must be >= 1"),
    ({"method_selection": {"eap": {"foo": 1}}}, "unknown key 'method_selection.eap.foo'; allowed: edge_counts, thresholds"),
    ({"thresholds": [], "method_selection": {"eap": {"edge_counts": [3]}}}, "method 'acdc' has no thresholds"),
])
def test_bad_method_selection_is_one_line(bad, needle):
    with pytest.raises(ModcircuitError) as e:
        parse_spec({**BASE, **bad})
    assert needle in str(e.value) and "\n" not in str(e.value)
