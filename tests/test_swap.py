"""BIMT swaps: never change the function, closed-form cost change is exact, optimizer state moves."""
import pytest
import torch

from modcircuit.nn.mlp import MLP
from modcircuit.train.regimes import connection_cost
from modcircuit.train.swap import placement_cost, relocate, swap_deltas, swap_neurons

LAYER_KINDS = {
    "line": dict(widths=[4, 7, 6, 3], layouts=None, embedding=None),
    "folds+embedding": dict(widths=[10, 8, 6, 7], layouts=[{"kind": "line", "folds": 2}, {"kind": "line"},
                            {"kind": "line"}, {"kind": "line"}], embedding={"vocab": 7, "dim": 5, "n_tokens": 2}),
    "grid+ring": dict(widths=[16, 9, 9, 5], layouts=[{"kind": "grid", "shape": [4, 4]}, {"kind": "grid", "shape": [3, 3]},
                      {"kind": "grid", "shape": [3, 3]}, {"kind": "ring"}], embedding=None),
}


def _model(kind):
    spec = LAYER_KINDS[kind]
    torch.manual_seed(1)
    return MLP(spec["widths"], "silu", spec["layouts"], spec["embedding"]).double()


def _inputs(model, n=32):
    if model.embedding is not None:
        return torch.randint(0, model.embedding.num_embeddings, (n, 2))
    return torch.randn(n, model.widths[0], dtype=torch.float64)


@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_random_swaps_keep_function_on_every_layer(kind):
    model = _model(kind)
    x = _inputs(model)
    before = model(x).detach()
    g = torch.Generator().manual_seed(0)
    expected_in, expected_out = torch.arange(model.widths[0]), torch.arange(model.widths[-1])
    for layer in range(len(model.widths)):
        f = model.folds(layer)
        m = model.widths[layer] // f
        for _ in range(10):
            i, j = torch.randint(0, m, (2,), generator=g).tolist()
            swap_neurons(model, layer, i, j)
            for buf, at in ((expected_in, 0), (expected_out, len(model.widths) - 1)):
                if layer == at:
                    for k in range(f):  # a folded position moves in every fold
                        buf[[i + k * m, j + k * m]] = buf[[j + k * m, i + k * m]]
    assert torch.equal(model.in_perm, expected_in) and torch.equal(model.out_perm, expected_out)
    assert (model(x).detach() - before).abs().max() < 1e-6


def test_permutation_buffers_keep_input_and_output_meaning():
    model = _model("line")
    swap_neurons(model, 0, 0, 2)
    swap_neurons(model, 3, 0, 1)
    # input position 0 now reads feature 2, and output position 0 computes output 1
    assert model.in_perm.tolist()[:3] == [2, 1, 0]
    assert model.out_perm.tolist()[:2] == [1, 0]
    x = torch.zeros(1, 4, dtype=torch.float64)
    x[0, 2] = 1.0
    assert torch.equal(model.features(x)[0], torch.tensor([1.0, 0, 0, 0], dtype=torch.float64))


def test_folded_input_swap_moves_every_fold():
    model = _model("folds+embedding")
    swap_neurons(model, 0, 1, 3)
    assert model.in_perm.tolist() == [0, 3, 2, 1, 4, 5, 8, 7, 6, 9]


@pytest.mark.parametrize("kind", LAYER_KINDS)
@pytest.mark.parametrize("agg", ["sum", "mean"])
def test_closed_form_cost_change_equals_brute_force(kind, agg):
    model = _model(kind)
    wf, l0 = 1.7, 0.3
    for layer in range(len(model.widths)):
        m = model.widths[layer] // model.folds(layer)
        A = placement_cost(model, layer, wf, agg)
        base = connection_cost(model, wf, l0, agg).item()
        for i in range(m):
            predicted = swap_deltas(A, i)
            for j in range(m):
                swap_neurons(model, layer, i, j)
                actual = connection_cost(model, wf, l0, agg).item() - base
                swap_neurons(model, layer, i, j)
                assert predicted[j].item() == pytest.approx(actual, abs=1e-9, rel=1e-9), (layer, i, j)


def test_adam_moments_move_with_the_swapped_neurons():
    model = _model("line")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = _inputs(model)
    for _ in range(3):
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        opt.step()
    w_in, w_out = model.linears[0].weight, model.linears[1].weight
    st_in, st_b, st_out = opt.state[w_in], opt.state[model.linears[0].bias], opt.state[w_out]
    before = {k: (st_in[k].clone(), st_b[k].clone(), st_out[k].clone()) for k in ("exp_avg", "exp_avg_sq")}
    swap_neurons(model, 1, 2, 5, opt)
    for k, (a_in, a_b, a_out) in before.items():
        assert torch.equal(st_in[k][2], a_in[5]) and torch.equal(st_in[k][5], a_in[2])
        assert torch.equal(st_b[k][2], a_b[5]) and torch.equal(st_b[k][5], a_b[2])
        assert torch.equal(st_out[k][:, 2], a_out[:, 5]) and torch.equal(st_out[k][:, 5], a_out[:, 2])
        assert torch.equal(st_in[k][0], a_in[0])


def test_relocate_lowers_cost_and_keeps_function():
    model = _model("grid+ring")
    x = _inputs(model)
    before = model(x).detach()
    cost0 = connection_cost(model, 2.0, 0.5, "mean").item()
    n = relocate(model, top_k=9, weight_factor=2.0, agg="mean", swap_inputs=True, swap_outputs=True)
    assert n > 0
    assert connection_cost(model, 2.0, 0.5, "mean").item() < cost0
    assert (model(x).detach() - before).abs().max() < 1e-6
