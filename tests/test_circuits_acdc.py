import pytest
import torch

import modcircuit.tasks.planted  # noqa: F401  (registers planted tasks)
from modcircuit.circuits import discover, evaluate
from modcircuit.errors import ModcircuitError
from modcircuit.tasks import get_task
from circuit_helpers import pairs, random_mlp


def reference_acdc(model, clean, corrupt, threshold, metric, ablation):
    """Plain ACDC written from the rule: one full masked forward per edge, float64, the design's formula."""
    m = model.clone().double()
    W = [lin.weight.detach() for lin in m.linears]
    b = [lin.bias.detach() for lin in m.linears]
    L = len(W)

    def run(h, masks=None):
        hs = [h]
        for l in range(L):
            if masks is None:
                z = hs[-1] @ W[l].T + b[l]
            else:
                M = masks[l]
                z = hs[-1] @ (M * W[l]).T + abl[l] @ ((1 - M) * W[l]).T + b[l]
            hs.append(m.act(l + 1, z) if l + 1 < L else z)
        return hs

    with torch.no_grad():
        hc = run(m.features(clean.double()))
        target = hc[-1]
        if ablation == "resample":
            abl = run(m.features(corrupt.double()))[:-1]
        elif ablation == "zero":
            abl = [torch.zeros(1, w, dtype=torch.float64) for w in m.widths[:-1]]
        else:
            abl = [h.mean(0, keepdim=True) for h in hc[:-1]]

        def score(masks):
            out = run(hc[0], masks)[-1]
            if metric == "kl":
                p = torch.log_softmax(target, -1)
                q = torch.log_softmax(out, -1)
                return ((p.exp() * (p - q)).sum(-1).sum() / len(out)).item()
            return ((out - target) ** 2).mean().item()

        masks = [torch.ones_like(w) for w in W]
        scores = [torch.zeros_like(w) for w in W]
        cur = score(masks)
        for l in reversed(range(L)):
            for j in range(W[l].shape[0]):
                for i in range(W[l].shape[1]):
                    masks[l][j, i] = 0.0
                    new = score(masks)
                    scores[l][j, i] = new - cur
                    if new - cur < threshold:
                        cur = new
                    else:
                        masks[l][j, i] = 1.0
    return [x.bool() for x in masks], scores


CASES = [
    ([5, 8, 7, 3], "silu", "kl", "resample", False),
    ([5, 8, 7, 3], "relu", "mse", "resample", True),
    ([4, 6, 6, 6, 2], "tanh", "kl", "mean", False),
    ([4, 7, 5, 3], "gelu", "mse", "zero", True),
]


KERNELS = ["torch", "compiled"]  # the batched speculative kernel and the numba one (extra `fast`)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("widths,act,metric,ablation,permute", CASES)
def test_fast_acdc_equals_plain_reference(widths, act, metric, ablation, permute, kernel):
    model = random_mlp(widths, act, seed=len(widths) + widths[1], permute=permute)
    clean, corrupt = pairs(widths[0], n=16, seed=5)
    partial = 0
    for threshold in [1e-4, 1e-3, 1e-2, 5e-2]:
        ref_mask, ref_scores = reference_acdc(model, clean, corrupt, threshold, metric, ablation)
        for method, kw in [("acdc", {"kernel": kernel}), ("acdc-plain", {})]:
            c = discover(model, clean, corrupt, method=method, threshold=threshold, metric=metric, ablation=ablation,
                         **kw)
            for got, want in zip(c.mask, ref_mask):
                assert torch.equal(got, want), (method, threshold)
            for got, want in zip(c.scores, ref_scores):
                assert torch.allclose(got, want, rtol=1e-9, atol=1e-12), (method, threshold)
        n_kept = sum(int(x.sum()) for x in ref_mask)
        partial += 0 < n_kept < c.n_edges
    assert partial >= 2  # most thresholds keep some edges and drop others: the comparison means something


def test_fast_acdc_counts_fewer_passes_than_edges():
    model = random_mlp([8, 16, 16, 4], seed=0)
    clean, corrupt = pairs(8, n=32, seed=1)
    c = discover(model, clean, corrupt, method="acdc", threshold=1e-3, kernel="torch")
    assert 0 < c.n_kept < c.n_edges
    assert c.forward_passes < c.n_edges / 2  # batched passes, not one forward per edge
    assert c.extra["kernel"] == "torch"
    # compiled: one partial evaluation per edge with an effect, none for the rest
    c2 = discover(model, clean, corrupt, method="acdc", threshold=1e-3, kernel="compiled")
    assert c2.extra["kernel"] == "compiled" and c2.extra["candidates"] <= c2.n_edges
    assert c2.forward_passes == c2.extra["candidates"] + 1  # (and the full forward it starts from)
    assert all(torch.equal(a, b) for a, b in zip(c.mask, c2.mask))


@pytest.mark.parametrize("ablation", ["resample", "mean"])
def test_auto_kernel_is_compiled_on_cpu_and_float32_runs_its_float64_twin(ablation):
    model = random_mlp([6, 8, 8, 3], seed=2)
    clean, corrupt = pairs(6, n=12, seed=1)
    kw = dict(method="acdc", threshold=1e-3, ablation=ablation)
    c64 = discover(model, clean, corrupt, **kw)
    c32 = discover(model, clean, corrupt, dtype="float32", **kw)
    assert c64.extra["kernel"] == c32.extra["kernel"] == "compiled"
    assert 0 < c32.n_kept < c32.n_edges
    if ablation == "resample":  # the same weights and inputs widened: the float64 run itself
        assert all(torch.equal(a, b) for a, b in zip(c32.mask, c64.mask))
        assert all(torch.equal(a, b) for a, b in zip(c32.scores, c64.scores))
    # against the float32 reference: the same decisions, scores within float32 rounding
    ref = discover(model, clean, corrupt, dtype="float32", **{**kw, "method": "acdc-plain"})
    torch32 = discover(model, clean, corrupt, dtype="float32", kernel="torch", **kw)
    assert torch32.extra["kernel"] == "torch"
    for c in (c32, torch32):
        assert all(torch.equal(a, b) for a, b in zip(c.mask, ref.mask))
        assert max((a - b).abs().max().item() for a, b in zip(c.scores, ref.scores)) < 1e-5
    assert max((a - b).abs().max().item() for a, b in zip(c32.scores, ref.scores)) > 0  # really float32 there
    with pytest.raises(ModcircuitError, match="unknown kernel 'numba'; allowed: auto, compiled, torch"):
        discover(model, clean, corrupt, method="acdc", threshold=1e-3, kernel="numba")


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("widths,act", [([5, 8, 7, 3], "silu"), ([5, 9, 8, 7, 4], "gelu"), ([4, 6, 5], "sigmoid")])
def test_fast_acdc_equals_reference_with_the_logit_difference_metric(widths, act, kernel):
    model = random_mlp(widths, act, seed=11)
    clean, corrupt = pairs(widths[0], n=16, seed=4)
    labels = torch.arange(16) % widths[-1]
    for threshold in [1e-3, 1e-2, 1e-1]:
        ref = discover(model, clean, corrupt, labels=labels, method="acdc-plain", threshold=threshold,
                       metric="logit-diff")
        c = discover(model, clean, corrupt, labels=labels, method="acdc", threshold=threshold, metric="logit-diff",
                     kernel=kernel)
        assert all(torch.equal(a, b) for a, b in zip(c.mask, ref.mask)), threshold
        for a, b in zip(c.scores, ref.scores):
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-12), threshold


@pytest.mark.parametrize("name", ["planted", "planted-distractor"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ablation", ["resample", "zero", "mean"])
def test_acdc_recovers_planted_circuit_exactly(name, seed, ablation):
    task = get_task(name, seed=seed)
    model = task.build_model()
    c = discover(model, task, method="acdc", threshold=1e-3, ablation=ablation)
    for got, want in zip(c.mask, task.edge_truth):
        assert torch.equal(got, want)
    rep = evaluate(model, c, task)
    assert rep["auc_edges"] == 1.0
    assert rep["auc_inputs"] == 1.0


def test_random_auc_near_half_on_planted():
    aucs = []
    for seed in range(10):
        task = get_task("planted", seed=seed, widths=(10, 40, 40, 3))
        model = task.build_model()
        c = discover(model, task, method="random", seed=seed)
        aucs.append(evaluate(model, c, task, curve_points=2)["auc_edges"])
    mean = sum(aucs) / len(aucs)
    assert abs(mean - 0.5) < 0.07, aucs


@pytest.mark.parametrize("kernel", KERNELS)
def test_fast_acdc_equals_reference_with_peaked_logits(kernel):
    """Large logits: the fast KL shortcuts (output-only and last-hidden-layer receivers) stay exact."""
    model = random_mlp([5, 8, 7, 3], "silu", seed=3, permute=False)
    with torch.no_grad():
        model.linears[-1].weight.mul_(40)
        model.linears[-2].weight.mul_(3)
    clean, corrupt = pairs(5, n=16, seed=2)
    for threshold in [1e-3, 1e-1, 1.0]:
        ref_mask, ref_scores = reference_acdc(model, clean, corrupt, threshold, "kl", "resample")
        c = discover(model, clean, corrupt, method="acdc", threshold=threshold, metric="kl", kernel=kernel)
        assert all(torch.equal(g, w) for g, w in zip(c.mask, ref_mask)), threshold
        for got, want in zip(c.scores, ref_scores):
            assert torch.allclose(got, want, rtol=1e-9, atol=1e-12), threshold


DENSE_CASES = [
    ([6, 12, 10, 4], "relu", "kl", "resample"),
    ([6, 12, 10, 4], "relu", "mse", "zero"),
    ([5, 9, 8, 7, 3], "silu", "kl", "mean"),  # general tail
    ([5, 9, 8, 7, 3], "relu", "mse", "resample"),
]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("widths,act,metric,ablation", DENSE_CASES)
def test_fast_acdc_equals_reference_on_dense_circuits(widths, act, metric, ablation, kernel):
    """Thresholds keeping 10-50% of the edges: many wrong "removed" guesses, so the individual-effect
    predictions and the chains restarted after wrong guesses all run."""
    model = random_mlp(widths, act, seed=7, scale=0.6)
    clean, corrupt = pairs(widths[0], n=20, seed=3)
    c0 = discover(model, clean, corrupt, method="acdc", threshold=0.0, metric=metric, ablation=ablation)
    scores = torch.cat([s.flatten() for s in c0.scores])
    dense = 0
    for q in [0.5, 0.75, 0.9]:  # thresholds from the score distribution: circuits of varied density
        threshold = max(torch.quantile(scores, q).item(), 1e-12)
        ref_mask, ref_scores = reference_acdc(model, clean, corrupt, threshold, metric, ablation)
        c = discover(model, clean, corrupt, method="acdc", threshold=threshold, metric=metric, ablation=ablation,
                     kernel=kernel)
        for got, want in zip(c.mask, ref_mask):
            assert torch.equal(got, want), threshold
        for got, want in zip(c.scores, ref_scores):
            assert torch.allclose(got, want, rtol=1e-9, atol=1e-12), threshold
        dense += 0.1 <= c.n_kept / c.n_edges <= 0.5
    assert dense >= 1  # at least one circuit in the dense range the test is about



def test_discover_with_a_list_of_sizes_equals_one_call_per_size():
    from modcircuit.errors import ModcircuitError
    from modcircuit.nn.mlp import MLP

    torch.manual_seed(0)
    model = MLP([6, 8, 8, 3], "silu")
    x = torch.randn(40, 6)
    xc = x.roll(1, 0)
    many = discover(model, x, xc, method="eap", top_k=[3, 20, 30])
    assert [c.n_kept for c in many] == [3, 20, 30]
    for c in many:
        one = discover(model, x, xc, method="eap", top_k=c.extra["top_k"])
        assert all(torch.equal(a, b) for a, b in zip(c.mask, one.mask))
        assert all(torch.equal(a, b) for a, b in zip(c.scores, one.scores))
    assert many[0].scores[0] is not many[1].scores[0]
    # the curves depend on the scores alone: taken from another size's report, they are what evaluate computes
    first = evaluate(model, many[0], (x, xc))
    for c in many[1:]:
        fresh, reused = evaluate(model, c, (x, xc)), evaluate(model, c, (x, xc), curves_of=first)
        assert reused == fresh and reused["curve"] is first["curve"]  # (taken, not recomputed)
    bare = evaluate(model, many[0], (x, xc), curves=False)
    assert not {"curve", "mib_curve", "curve_area", "cpr", "cmd"} & set(bare)
    assert {k: v for k, v in first.items() if k in bare} == bare
    with pytest.raises(ModcircuitError, match="top_k is an empty list"):
        discover(model, x, xc, method="eap", top_k=[])
    with pytest.raises(ModcircuitError, match="top_k"):
        discover(model, x, xc, method="eap", top_k=[3, 10_000])
