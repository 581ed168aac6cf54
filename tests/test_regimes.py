"""Regimes: the registry, every penalty's direct gradient against autograd, weight-sparse's projection,
clusterability's C against its definition, bad options, and the lam schedule."""
import numpy as np
import pytest
import torch
from sklearn.cluster import SpectralCoclustering

import modcircuit as mc
from modcircuit.errors import ModcircuitError
from modcircuit.nn.mlp import MLP
from modcircuit.nn.transformer import GeometricTransformer
from modcircuit.train.config import make_config
from modcircuit.train.regimes import (REGIMES, Regime, connection_cost, get_regime, lam_at, regime_names,
                                      register_regime)
from modcircuit.train.regimes import base as regimes_base
from modcircuit.train.regimes.weight_sparse import kept


def _mlp():
    torch.manual_seed(0)
    return MLP([16, 9, 5], "silu", [{"kind": "grid", "shape": [4, 4]}, {"kind": "grid", "shape": [3, 3]},
                                     {"kind": "ring"}]).double()


def _transformer():
    torch.manual_seed(0)
    return GeometricTransformer(n_layers=1, d_model=8, n_heads=2, d_head=4, d_mlp=8, n_ctx=3, d_out=3,
                                d_vocab=5).double()


def _hooks(model, regime, agg="sum", **options):
    cfg = make_config({}, {"regime": regime, "weight_factor": 1.5, "l0": 0.2, "agg": agg, **options})
    return get_regime(regime)(model, cfg)


def test_registry_lists_the_built_ins_and_the_rivals_in_order():
    assert REGIMES == ("vanilla", "l1", "l2", "l1-local", "bimt", "weight-sparse", "clusterability", "group-lasso")
    with pytest.raises(ModcircuitError, match="unknown regime 'bimtx'; allowed: .*weight-sparse"):
        get_regime("bimtx")


@pytest.mark.parametrize("regime, options", [(r, {}) for r in REGIMES] + [
    ("group-lasso", {"group_by": "outgoing"}), ("group-lasso", {"group_norm": "rms"}),
    ("group-lasso", {"group_by": "outgoing", "group_norm": "rms"})])
@pytest.mark.parametrize("agg", ["sum", "mean"])
@pytest.mark.parametrize("build", [_mlp, _transformer])
def test_direct_penalty_gradient_equals_autograd(build, agg, regime, options):
    model = build()
    hooks = _hooks(model, regime, agg, clusters=2, **options)
    pen = hooks.penalty(0.3)
    if pen.requires_grad:
        pen.backward()
    expected = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    hooks.add_penalty_grad_(0.3, step=1)
    assert any(e.abs().sum() > 0 for e in expected) == (regime not in ("vanilla", "weight-sparse"))
    for p, e in zip(model.parameters(), expected):
        assert torch.allclose(p.grad, e, atol=1e-12), regime


def test_group_lasso_is_the_sum_of_neuron_norms():
    model = _mlp()
    w0, w1 = model.linears[0].weight, model.linears[1].weight
    incoming = sum(torch.linalg.norm(w[j]) for w in (w0, w1) for j in range(w.shape[0]))
    outgoing = sum(torch.linalg.norm(w[:, i]) for w in (w0, w1) for i in range(w.shape[1]))
    assert _hooks(model, "group-lasso").penalty(2.0).item() == pytest.approx(2 * incoming.item())
    assert _hooks(model, "group-lasso", group_by="outgoing").penalty(2.0).item() == pytest.approx(2 * outgoing.item())


@pytest.mark.parametrize("group_by", ["incoming", "outgoing"])
def test_group_lasso_rms_is_the_sum_of_neuron_rms_and_pulls_each_weight_like_l1(group_by):
    model = _mlp()
    ws = [lin.weight for lin in model.linears]
    groups = [w[j] if group_by == "incoming" else w[:, j] for w in ws
              for j in range(w.shape[0] if group_by == "incoming" else w.shape[1])]
    rms = sum(torch.sqrt((g ** 2).mean()) for g in groups)
    assert _hooks(model, "group-lasso", group_by=group_by, group_norm="rms").penalty(2.0).item() == \
        pytest.approx(2 * rms.item())
    # under agg "mean", a matrix whose entries all have one magnitude gets l1's per-weight pull, any fan-in
    wide = MLP([784, 6, 3], "silu", [{"kind": "line"}] * 3).double()
    with torch.no_grad():
        for lin in wide.linears:
            lin.weight.copy_(0.01 * torch.sign(torch.randn_like(lin.weight)))
    pulls = {}
    for regime, opts in (("l1", {}), ("group-lasso", {"group_by": group_by, "group_norm": "rms"}),
                         ("group-lasso", {"group_by": group_by})):
        for p in wide.parameters():
            p.grad = torch.zeros_like(p)
        _hooks(wide, regime, "mean", **opts).add_penalty_grad_(1.0, 0)
        pulls[(regime, bool(opts.get("group_norm")))] = wide.linears[0].weight.grad.abs()
    assert torch.allclose(pulls[("group-lasso", True)], pulls[("l1", False)], rtol=1e-12)
    fan = 784 if group_by == "incoming" else 6
    assert torch.allclose(pulls[("group-lasso", False)], pulls[("l1", False)] * fan ** 0.5, rtol=1e-12)


def test_group_norm_at_its_default_leaves_configuration_keys_as_they_were():
    assert make_config({}, {"regime": "group-lasso"}).model_dump()["regime_options"] == {"group_by": "incoming"}
    rms = make_config({}, {"regime": "group-lasso", "group_norm": "rms"}).model_dump()["regime_options"]
    assert rms == {"group_by": "incoming", "group_norm": "rms"}
    assert "regime_options" not in make_config({}, {"regime": "l1", "group_norm": "rms"}).model_dump()


def test_group_lasso_gradient_at_a_dead_neuron_is_zero():
    model = _mlp()
    with torch.no_grad():
        model.linears[0].weight[3] = 0
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    _hooks(model, "group-lasso").add_penalty_grad_(1.0, 0)
    g = model.linears[0].weight.grad
    assert torch.isfinite(g).all() and g[3].abs().sum() == 0 and g[2].abs().sum() > 0


@pytest.mark.parametrize("clusters", [2, 3])
def test_clusterability_equals_its_definition(clusters):
    model = _mlp()
    hooks = _hooks(model, "clusterability", clusters=clusters, seed=4)
    shares = []
    for lin in model.linears:  # brute force: sklearn's labels, entry by entry
        w = lin.weight.detach()
        if min(w.shape) < clusters:
            continue
        cc = SpectralCoclustering(n_clusters=clusters, random_state=4).fit(w.abs().numpy() + 1e-12 * w.abs().max().item())
        inside = sum(float(w[i, j]) ** 2 for i in range(w.shape[0]) for j in range(w.shape[1])
                     if cc.row_labels_[i] == cc.column_labels_[j])
        shares.append(inside / sum(float(v) ** 2 for v in w.flatten()))
    assert len(shares) == 2
    assert -hooks.penalty(1.0).item() == pytest.approx(sum(shares) / len(shares), rel=1e-12)
    assert 0 < sum(shares) / 2 < 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clusterability_gradient_compiled_and_numpy_paths_equal_autograd(dtype):
    model = _mlp().to(dtype)
    hooks = _hooks(model, "clusterability", clusters=2)
    hooks.penalty(0.3).backward()
    expected = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
    paths = [True, False] if hooks.compiled else [False]
    for compiled in paths:
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        hooks.compiled = compiled
        hooks.add_penalty_grad_(0.3, step=1)
        tol = 1e-6 if dtype == torch.float32 else 1e-12
        for p, e in zip(model.parameters(), expected):
            assert torch.allclose(p.grad, e, rtol=tol, atol=tol * max(e.abs().max().item(), 1e-30)), compiled
        assert any(p.grad.abs().sum() > 0 for p in model.parameters())


def test_clusterability_leaves_out_matrices_smaller_than_the_clusters():
    model = _mlp()  # linears [9, 16] and [5, 9]
    hooks = _hooks(model, "clusterability", clusters=6)
    assert hooks.masks[0] is not None and hooks.masks[1] is None


def test_clusterability_training_raises_c_and_reclusters():
    plain = mc.train("symbolic-independence", "vanilla", seed=0, steps=150)
    run = mc.train("symbolic-independence", "clusterability", seed=0, steps=150, lam=1.0, recluster_every=50)
    assert run.hyperparameters["regime_options"] == {"clusters": 4, "recluster_every": 50}
    assert run.history[-1]["penalty"] < 0  # - lam * C
    assert run.metrics["clusterability"] > plain.metrics["clusterability"]


def test_weight_sparse_keeps_exactly_k_and_zeroes_the_moments():
    run = mc.train("two-moons", "weight-sparse", seed=0, steps=60, density=0.2)
    assert run.hyperparameters["regime_options"] == {"density": 0.2, "anneal": 0.5}
    for w, _, _ in run.model.cost_terms():
        assert int((w != 0).sum()) == kept(w.numel(), 0.2) == max(1, -(-w.numel() // 5))
    # the moments, checked on a model whose optimizer we can see
    task = mc.get_task("two-moons")
    model = task.build_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    cfg = make_config(task.defaults, {"regime": "weight-sparse", "steps": 10, "density": 0.3, "anneal": 0.4})
    hooks = get_regime("weight-sparse")(model, cfg, opt)
    nonzero = []
    for step in range(10):
        opt.zero_grad()
        task.loss_fn(model(task.x_train), task.y_train).backward()
        opt.step()
        hooks.after_step(step)
        nonzero.append(int((model.linears[1].weight != 0).sum()))
    assert nonzero[0] < 400 and nonzero == sorted(nonzero, reverse=True) and nonzero[3] == nonzero[-1] == 120
    for w, _, _ in model.cost_terms():
        for name in ("exp_avg", "exp_avg_sq"):
            moment = opt.state[w][name]
            assert moment[w == 0].abs().sum() == 0 and moment[w != 0].abs().sum() > 0


def test_weight_sparse_density_anneals_linearly_over_the_first_half():
    cfg = make_config({}, {"regime": "weight-sparse", "steps": 100, "density": 0.1})
    hooks = get_regime("weight-sparse")(_mlp(), cfg)
    assert hooks.density_at(0) == pytest.approx(1 - 0.9 / 50)
    assert hooks.density_at(24) == pytest.approx(0.55)
    assert hooks.density_at(49) == hooks.density_at(99) == pytest.approx(0.1)


@pytest.mark.parametrize("overrides, message", [
    ({"regime": "weight-sparse", "density": 0}, "invalid density=0: Input should be greater than 0"),
    ({"regime": "weight-sparse", "density": 1.5}, "invalid density=1.5: Input should be less than or equal to 1"),
    ({"regime": "l1", "density": -0.1}, "invalid density=-0.1"),
    ({"regime": "group-lasso", "lam": -1}, "invalid lam=-1: Input should be greater than or equal to 0"),
    ({"regime": "clusterability", "clusters": 1}, "invalid clusters=1: Input should be greater than or equal to 2"),
    ({"regime": "group-lasso", "group_by": "sideways"}, "invalid group_by='sideways'"),
    ({"regime": "group-lasso", "group_norm": "max"}, "invalid group_norm='max': Input should be 'l2' or 'rms'"),
    ({"regime": "weight-sparse", "densty": 0.1}, "unknown hyperparameter 'densty'; allowed: .*density"),
])
def test_bad_options_get_one_line_errors(overrides, message):
    with pytest.raises(ModcircuitError, match=message) as e:
        mc.train("two-moons", seed=0, steps=2, **overrides)
    assert "\n" not in str(e.value)


def test_more_clusters_than_the_layers_have_is_one_line():
    with pytest.raises(ModcircuitError, match="clusters 21 is more than the layers have: .*at most 20") as e:
        mc.train("two-moons", "clusterability", seed=0, steps=2, clusters=21)
    assert "\n" not in str(e.value)


def test_options_of_other_regimes_are_accepted_and_dropped():
    plain = make_config({}, {"regime": "l1"}).model_dump()
    with_other = make_config({}, {"regime": "l1", "density": 0.05, "clusters": 3}).model_dump()
    assert plain == with_other and "regime_options" not in plain  # option-less regimes keep their old keys
    cfg = make_config({}, {"regime": "clusterability"})
    assert cfg.regime_options == {"clusters": 4, "recluster_every": 0} and cfg.lam == 0.1  # the regime's lam
    assert make_config({"lam": 0.5}, {"regime": "clusterability", "lam": 2.0}).lam == 2.0  # the user's wins
    # hyperparameters written to model.json rebuild the same config
    assert make_config({}, cfg.model_dump()).model_dump() == cfg.model_dump()


def test_a_new_regime_is_one_class():
    @register_regime
    class HalfWeights(Regime):
        name, description = "test-halve", "halves every weight matrix after each step"

        def after_step(self, step):
            for w, _, _ in self.model.cost_terms():
                w.mul_(0.5)

    try:
        assert "test-halve" in regime_names()
        run = mc.train("two-moons", "test-halve", seed=0, steps=3, lr=1e-9)
        w = run.model.linears[0].weight
        fresh = mc.get_task("two-moons").build_model  # same seed, same initial weights
        torch.manual_seed(0)
        assert torch.allclose(w, fresh().linears[0].weight / 8, atol=1e-6)
    finally:
        regimes_base._REGIMES.pop("test-halve")


def test_connection_cost_matches_its_definition():
    model = MLP([2, 3], "silu").double()
    w, b = model.linears[0].weight, model.linears[0].bias
    # 1-D layouts: inputs at 0.25, 0.75; outputs at 1/6, 1/2, 5/6
    d = torch.tensor([[abs(o - i) for i in (0.25, 0.75)] for o in (1 / 6, 0.5, 5 / 6)], dtype=torch.float64)
    expected = (w.abs() * (2.0 * d + 0.1)).sum() + (b.abs() * 0.1).sum()
    assert connection_cost(model, 2.0, 0.1, "sum").item() == pytest.approx(expected.item())


def test_lam_schedule_is_piecewise():
    sched = [[0.25, 10.0], [0.5, 100.0]]
    assert lam_at(0, 100, 0.01, sched) == 0.01
    assert lam_at(24, 100, 0.01, sched) == 0.01
    assert lam_at(25, 100, 0.01, sched) == pytest.approx(0.1)
    assert lam_at(99, 100, 0.01, sched) == pytest.approx(1.0)


def test_torch_free_regime_list_matches_the_registry():
    """`modcircuit --help` lists regimes from a torch-free module; it must name exactly the built-ins."""
    from modcircuit.regime_names import DEFAULT_REGIME, REGIMES as listed
    from modcircuit.train.regimes import REGIMES as registered, regime_names

    assert listed == registered
    assert DEFAULT_REGIME in regime_names()


def _plain_top_k(a: torch.Tensor, k: int) -> torch.Tensor:
    """The straightforward projection mask the fast one must equal: torch.topk's k entries (its pick among ties)."""
    keep = torch.zeros_like(a, dtype=torch.bool)
    keep[a.topk(k, sorted=False).indices] = True
    return keep


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("levels", [0, 40])
def test_weight_sparse_band_search_picks_the_same_entries_as_a_full_top_k(dtype, levels):
    """The projection's threshold search (a band around last step's threshold) is exact: at every step of a
    drifting matrix, with k falling as during annealing, then rising, with jumps that leave the band, and
    (levels > 0) values on a coarse grid so that many entries tie at the k-th value, its mask equals the
    plain top-k mask."""
    from modcircuit.train.regimes.weight_sparse import (_compiled_project as compiled, kth_largest, next_hint,
                                                         top_k_keep, top_k_keep_torch)

    g = torch.Generator().manual_seed(0)
    a = torch.rand(5000, generator=g, dtype=dtype)
    hint, c_hint, tied_steps = None, None, 0
    for step in range(80):
        scale = 1e-3 if step % 10 else 0.3  # every 10th step a big move, far outside the band
        a = (a + scale * torch.randn(5000, generator=g, dtype=dtype)).abs()
        if levels:
            a = torch.round(a * levels) / levels
        k = 4000 - 50 * step if step < 60 else 1000 + 90 * (step - 60)
        plain = _plain_top_k(a, k)
        thr, count, _ = kth_largest(a.numpy(), k, hint)
        assert thr == a.sort().values[-k] and count == int((a >= a.sort().values[-k]).sum()), step
        got, hint = top_k_keep(a.numpy(), k, hint)
        assert int(got.sum()) == k and torch.equal(torch.from_numpy(got), plain), step
        assert torch.equal(top_k_keep_torch(a, k), plain), step  # the path for tensors off the CPU
        if compiled is not None:  # the compiled projection: the same threshold, count and (without ties) entries
            w = (a * torch.where(torch.rand(5000, generator=g) < 0.5, -1.0, 1.0).to(dtype)).numpy().copy()
            m = [np.ones(5000, dtype=w.dtype) for _ in range(2)]
            c_thr, c_count = compiled(w, *m, np.empty(0, w.dtype), k, *(c_hint or (0.0, 0.0)), c_hint is not None)
            assert c_thr == thr and c_count == count, step
            if count == k:
                assert torch.equal(torch.from_numpy(w != 0), plain) and all(np.array_equal(x != 0, w != 0) for x in m)
            c_hint = next_hint(c_thr, c_hint)
        tied_steps += int((a == a[plain].min()).sum()) > 1
    assert (tied_steps == 80) if levels else (tied_steps == 0)  # the grid makes ties at the k-th value every step


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_projection_is_exact_when_the_threshold_sits_in_a_cluster_of_regrown_weights(dtype):
    """Pruned weights regrow with nearly one magnitude (Adam's first step from zeroed moments), so the k-th
    value can sit in a cluster of thousands of nearly equal entries: the compiled search then collects a
    dense band and selects in it with numpy. Its threshold, count and entries equal a full sort's, for
    thresholds at the cluster's top, middle and bottom, from a hint inside, above and below the cluster."""
    from modcircuit.train.regimes.weight_sparse import _compiled_project as compiled
    if compiled is None:
        pytest.skip("numba (extra `fast`) is not installed")
    rng = np.random.default_rng(0)
    n, n_big, n_cluster = 20000, 3000, 15000
    for k in (n_big + 1, n_big + 7000, n_big + n_cluster - 1, n_big + n_cluster + 5):
        for guess, width in ((0.0018, 1e-7), (0.0018, 1e-5), (0.003, 1e-4), (0.0005, 1e-4), (0.0018, 1e-3)):
            mags = np.concatenate([rng.uniform(0.002, 0.05, n_big), 0.0018 * (1 + 1e-4 * rng.standard_normal(n_cluster)),
                                   rng.uniform(0, 0.0017, n - n_big - n_cluster)]).astype(dtype)
            w = rng.permutation(mags * np.where(rng.random(n) < 0.5, -1, 1).astype(dtype))
            m1, m2 = np.ones(n, dtype), np.full(n, 2, dtype)
            expect = np.sort(np.abs(w))[n - k]
            count = int((np.abs(w) >= expect).sum())
            keep = np.abs(w) >= expect
            thr, got = compiled(w, m1, m2, np.empty(0, dtype), k, guess, width, True)
            assert thr == expect and got == count, (k, guess, width)
            if count == k:
                assert np.array_equal(w != 0, keep) and np.array_equal(m1 != 0, keep) and np.array_equal(m2 != 0, keep)


@pytest.mark.parametrize("compiled", [True, False])
def test_weight_sparse_training_equals_a_plain_projection_step_for_step(compiled):
    """Training under the regime gives bit-identical weights and Adam moments to a plain loop that zeroes all
    but torch.topk's k entries of each |W| (and their moments) after every step, while k anneals; the weights
    start on a coarse grid, so the first projections cut through ties. Both projections: compiled (numba)
    and numpy."""
    task = mc.get_task("two-moons")
    models = []
    for _ in range(2):
        torch.manual_seed(3)
        model = task.build_model([2, 24, 24, 2])
        with torch.no_grad():
            for w, _, _ in model.cost_terms():
                w.copy_(torch.round(w * 4) / 4)
        models.append(model)
    fast, plain = models
    opts = [torch.optim.Adam(m.parameters(), lr=3e-2) for m in models]
    cfg = make_config(task.defaults, {"regime": "weight-sparse", "steps": 40, "density": 0.1, "anneal": 0.5})
    hooks = get_regime("weight-sparse")(fast, cfg, opts[0])
    if compiled and not hooks.compiled:
        pytest.skip("numba (extra `fast`) is not installed")
    hooks.compiled = compiled
    for step in range(40):
        for model, opt in zip(models, opts):
            opt.zero_grad()
            task.loss_fn(model(task.x_train), task.y_train).backward()
            opt.step()
        hooks.after_step(step)
        with torch.no_grad():
            for w, _, _ in plain.cost_terms():
                keep = _plain_top_k(w.abs().view(-1), kept(w.numel(), hooks.density_at(step))).view_as(w)
                for t in (w, opts[1].state[w]["exp_avg"], opts[1].state[w]["exp_avg_sq"]):
                    t.mul_(keep)
        for (w, _, _), (v, _, _) in zip(fast.cost_terms(), plain.cost_terms()):
            assert torch.equal(w, v), step
            for name in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(opts[0].state[w][name], opts[1].state[v][name]), (step, name)
    assert all(int((w != 0).sum()) == kept(w.numel(), 0.1) for w, _, _ in fast.cost_terms())


def test_weight_sparse_projection_follows_a_new_optimizer_and_new_weight_memory():
    """The projection keeps its numpy views between steps; a fresh optimizer (new moment tensors) or a weight
    given new memory (w.data = ...) must be seen, not the stale views written."""
    task = mc.get_task("two-moons")
    model = task.build_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    cfg = make_config(task.defaults, {"regime": "weight-sparse", "steps": 10, "density": 0.3})
    hooks = get_regime("weight-sparse")(model, cfg, opt)
    for step in range(10):
        if step == 4:
            opt = hooks.optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        if step == 7:
            for w, _, _ in model.cost_terms():
                w.data = w.data.clone()
        opt.zero_grad()
        task.loss_fn(model(task.x_train), task.y_train).backward()
        opt.step()
        hooks.after_step(step)
        for w, _, _ in model.cost_terms():
            assert int((w != 0).sum()) == kept(w.numel(), hooks.density_at(step)), step
            for name in ("exp_avg", "exp_avg_sq"):
                assert opt.state[w][name][w == 0].abs().sum() == 0, (step, name)
