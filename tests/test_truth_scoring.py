"""Scoring head-level circuits against a HeadTruth: q/k/v-apart and merged ROC, MIB's AUROC, evaluate's keys,
and every transformer method on a model in which one head alone carries the answer."""
import math
import statistics

import pytest
import torch

from modcircuit.circuits.circuit import TransformerCircuit
from modcircuit.circuits.discover import discover
from modcircuit.circuits.graph import TransformerGraph
from modcircuit.circuits.metrics import evaluate
from modcircuit.circuits.truth import HeadTruth
from modcircuit.circuits.truth_scoring import (
    greedy_from_output, head_truth_scores, load_head_truth, merged_scores, mib_area, mib_budgets, mib_roc, prune,
    resolve_head_truth,
)
from modcircuit.errors import ModcircuitError
from modcircuit.nn.transformer import GeometricTransformer

torch.set_num_threads(1)


def circuit_of(scores: torch.Tensor, g: TransformerGraph) -> TransformerCircuit:
    scores = torch.where(g.allowed, scores.double(), torch.full_like(scores.double(), float("nan")))
    return TransformerCircuit([scores], [torch.zeros_like(g.allowed)], method="hand", graph=g)


def fill(g: TransformerGraph, value: float, **named) -> torch.Tensor:
    """A score tensor: `value` on every edge, named edges ("A0.1->A1.0.k") set as given."""
    S = torch.full((g.n_dest, g.n_src), float(value), dtype=torch.float64)
    si = {n: i for i, n in enumerate(g.src_names())}
    di = {n: i for i, n in enumerate(g.dest_names())}
    for name, v in named.items():
        s, d = name.split("__")
        S[di[d], si[s]] = v
    return S


# ---- q/k/v apart and merged -------------------------------------------------------------------------
def test_right_head_through_the_wrong_input_is_visible_only_with_qkv_apart():
    """The truth says A0.1 feeds A1.0's keys; the method found A0.1 -> A1.0 through the values. Merged, the
    head's score is the max over its inputs, so the merged ROC is perfect; q/k/v apart, the true k edge
    ranks last and the top edge is a false one."""
    g = TransformerGraph(2, 2, split_qkv=True)
    truth = HeadTruth(2, 2, {("A0.1", "A1.0.k"), ("A1.0", "output")})
    S = fill(g, 0.1, **{"A0.1__A1.0.v": 1.0, "A0.1__A1.0.k": 0.0, "A1.0__output": 0.9})
    r = head_truth_scores(circuit_of(S, g), truth)
    n_neg = g.n_edges - 2
    # the output edge beats every false edge but the 1.0 one; the k edge beats none
    assert r["auc_heads_qkv"] == pytest.approx((n_neg - 1) / n_neg / 2)
    assert r["auc_heads_merged"] == 1.0
    assert (r["truth_edges_qkv"], r["truth_edges_merged"]) == (2, 2)
    assert r["roc_heads_qkv"]["fpr"][0] == 0 and r["roc_heads_merged"]["tpr"][-1] == 1


def test_merged_scores_take_the_max_over_q_k_v_and_keep_nan_only_where_all_are():
    g = TransformerGraph(2, 1, split_qkv=True)
    S = fill(g, 0.5, **{"embed__A1.0.q": 0.2, "embed__A1.0.k": 3.0, "embed__A1.0.v": -1.0})
    S[g.dest_attn(1, 0, 0), g.src_head(0, 0)] = float("nan")  # one input unscored: the others decide
    ms, mg = merged_scores(S, g)
    assert not mg.split_qkv and ms.shape == (mg.n_dest, mg.n_src)
    assert ms[mg.dest_attn(1, 0), 0] == 3.0
    assert ms[mg.dest_attn(1, 0), g.src_head(0, 0)] == 0.5
    S2 = S.clone()
    S2[[g.dest_attn(1, 0, c) for c in range(3)], g.src_head(0, 0)] = float("nan")
    assert math.isnan(merged_scores(S2, g)[0][mg.dest_attn(1, 0), g.src_head(0, 0)].item())
    assert torch.equal(ms[mg.dest_out], S[g.dest_out]) and torch.equal(ms[mg.dest_mlp(1)], S[g.dest_mlp(1)])


def test_a_merged_circuit_gets_only_merged_scoring():
    g = TransformerGraph(2, 2, split_qkv=False)
    truth = HeadTruth(2, 2, {("A0.1", "A1.0.k")})
    r = head_truth_scores(circuit_of(fill(g, 0.0, **{"A0.1__A1.0": 1.0}), g), truth)
    assert "auc_heads_qkv" not in r and r["auc_heads_merged"] == 1.0 and r["truth_edges_merged"] == 1


def test_non_edges_are_left_out_so_random_scores_average_one_half():
    """Counting the NaN non-edges as low-scored negatives would lift every AUC; over 60 seeds of random
    scores the mean AUC must be 0.5 within 4 standard errors."""
    g = TransformerGraph(2, 2, split_qkv=True)
    truth = HeadTruth(2, 2, {("embed", "output"), ("A1.0", "output"), ("embed", "A1.0.q"), ("embed", "A1.0.k")})
    aucs = {"auc_heads_qkv": [], "auc_heads_merged": []}
    for seed in range(60):
        S = torch.rand(g.n_dest, g.n_src, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        r = head_truth_scores(circuit_of(S, g), truth)
        for k in aucs:
            aucs[k].append(r[k])
    for k, v in aucs.items():
        se = statistics.stdev(v) / math.sqrt(len(v))
        assert abs(statistics.mean(v) - 0.5) < 4 * se, (k, statistics.mean(v), se)


def test_no_false_edge_or_no_true_edge_gives_none():
    g = TransformerGraph(1, 1, split_qkv=False)
    r = head_truth_scores(circuit_of(fill(g, 1.0), g), HeadTruth(1, 1, set()))
    assert r["auc_heads_merged"] is None and r["mib_auroc"] is None


# ---- MIB's protocol ---------------------------------------------------------------------------------
def test_mib_budgets_are_ceilings_of_the_fractions():
    assert mib_budgets(6) == [1, 1, 1, 1, 1, 1, 1, 2, 3, 6]
    assert mib_budgets(30)[6] == 3  # 0.1 * 30 is 3.0000000000000004 in floating point: still 3
    assert mib_budgets(1000) == [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]


def _one_layer():
    """1 layer, 1 head, merged: edges embed->A0.0, embed->MLP0, A0.0->MLP0, and embed/A0.0/MLP0->output."""
    g = TransformerGraph(1, 1, split_qkv=False)
    S = fill(g, 0.0, **{"A0.0__output": 0.9, "embed__output": 0.5, "embed__MLP0": 0.3, "MLP0__output": 0.2,
                        "embed__A0.0": 0.1, "A0.0__MLP0": 0.05})
    return g, S


def test_mib_greedy_builds_from_the_output_and_pruning_drops_unfed_heads():
    g, S = _one_layer()
    one = greedy_from_output(S, g, 1)
    assert int(one.sum()) == 1 and one[g.dest_out, g.src_head(0, 0)]
    assert int(prune(one, g).sum()) == 0  # A0.0 has no input: it and its edge go
    three = greedy_from_output(S, g, 3)  # A0.0->out, embed->out, MLP0->out (embed->MLP0 was no candidate yet)
    assert {(k, s) for k, s in torch.nonzero(three).tolist()} == {
        (g.dest_out, g.src_head(0, 0)), (g.dest_out, 0), (g.dest_out, g.src_mlp(0))}
    assert torch.nonzero(prune(three, g)).tolist() == [[g.dest_out, 0]]
    four = prune(greedy_from_output(S, g, 4), g)  # embed->MLP0 joins: MLP0 is fed now
    assert int(four.sum()) == 3 and four[g.dest_mlp(0), 0] and four[g.dest_out, g.src_mlp(0)]


def test_mib_auroc_by_hand_and_how_it_differs_from_the_threshold_free_roc():
    """Truth: embed -> A0.0 -> output. The threshold-free ROC ranks A0.0->output first (AUC 5/8); MIB's greedy
    circuits cannot keep it until A0.0 is fed, which it is only in the full graph: points (0, 0) x 7,
    (0.25, 0) x 2, (1, 1); area 0.75 * 0.5 = 0.375."""
    g, S = _one_layer()
    truth = HeadTruth(1, 1, {("embed", "A0.0.v"), ("A0.0", "output")})
    pts = mib_roc(S, truth.mask(g), g)
    assert pts["budgets"] == [1, 1, 1, 1, 1, 1, 1, 2, 3, 6]
    assert pts["kept"] == [0] * 7 + [1, 1, 6]
    assert pts["tpr"] == [0.0] * 9 + [1.0]
    assert pts["fpr"] == [0.0] * 7 + [0.25, 0.25, 1.0]
    assert mib_area(pts) == pytest.approx(0.375)
    r = head_truth_scores(circuit_of(S, g), truth)
    assert r["auc_heads_merged"] == pytest.approx(5 / 8) and r["mib_auroc"] == pytest.approx(0.375)


def test_mib_area_normalizes_by_the_last_fpr_and_starts_at_the_first_point():
    pts = {"fpr": [0.1, 0.5], "tpr": [0.5, 1.0]}
    assert mib_area(pts) == pytest.approx((1.0 - 0.2) * 0.75)


# ---- where the truth comes from ---------------------------------------------------------------------
class _Task:
    name = "fake"

    def __init__(self, truth):
        self.truth = truth

    def head_truth_for(self, model):
        return self.truth


def test_truth_precedence_explicit_then_model_then_task(tmp_path):
    a, b, c = (HeadTruth(1, 1, {(s, "output")}) for s in ("embed", "A0.0", "MLP0"))

    class M:
        head_truth = b.to_dict()  # a stored dict works as well as a HeadTruth

    assert resolve_head_truth(M(), _Task(c), a) == a
    assert resolve_head_truth(M(), _Task(c)) == b
    assert resolve_head_truth(object(), _Task(c)) == c
    assert resolve_head_truth(object(), _Task(None)) is None
    assert resolve_head_truth(object(), object()) is None  # a task without head_truth_for
    p = tmp_path / "t.json"
    import json

    p.write_text(json.dumps(a.to_dict()))
    assert resolve_head_truth(object(), None, str(p)) == a == load_head_truth(p)


def test_truth_files_that_are_not_truths_are_one_line_errors(tmp_path):
    with pytest.raises(ModcircuitError, match="does not exist"):
        load_head_truth(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ModcircuitError, match="not valid JSON"):
        load_head_truth(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ModcircuitError, match="is a list"):
        load_head_truth(tmp_path / "list.json")
    (tmp_path / "rec.json").write_text('{"edges": []}')
    with pytest.raises(ModcircuitError, match="ground-truth record"):
        load_head_truth(tmp_path / "rec.json")


# ---- a model in which one head carries the answer -------------------------------------------------------
ONE_HEAD_TRUTH = HeadTruth(2, 2, {("embed", "output"), ("A1.0", "output"), ("embed", "A1.0.q"),
                                  ("embed", "A1.0.k"), ("embed", "A1.0.v")}, rule="by construction")


def one_head_model(seed: int = 0):
    """2 layers x 2 heads; every component but head A1.0 reads and writes nothing, so only the edges of
    ONE_HEAD_TRUTH (the embedding to the output directly and through A1.0's q, k and v) change the output."""
    torch.manual_seed(seed)
    m = GeometricTransformer(d_vocab=7, n_layers=2, d_model=16, n_heads=2, d_head=4, d_mlp=16, n_ctx=4, d_out=5,
                             layernorm=False)
    dh = m.d_head
    with torch.no_grad():
        for l, b in enumerate(m.blocks):
            for h in range(m.n_heads):
                rows = slice(h * dh, (h + 1) * dh)
                if (l, h) == (1, 0):
                    b.W_Q[rows] *= 3  # a sharper attention pattern: q and k matter
                    b.W_V[rows] *= 3
                    continue
                for W in (b.W_Q, b.W_K, b.W_V):
                    W[rows] = 0
                b.W_O[:, rows] = 0
            b.W_in.zero_()
            b.W_out.zero_()
    g = torch.Generator().manual_seed(seed)
    x, xc = torch.randint(0, 7, (32, 4), generator=g), torch.randint(0, 7, (32, 4), generator=g)
    return m, x, xc


@pytest.fixture(scope="module")
def one_head():
    return one_head_model()


@pytest.mark.parametrize("method,options", [
    ("acdc", {"threshold": 0.0}), ("acdc", {"threshold": 0.01}), ("acdc", {"threshold": 0.1}),
    ("eap", {}), ("eap-ig", {}), ("magnitude", {}), ("probing", {"steps": 20}),
])
def test_every_method_finds_the_one_head(one_head, method, options):
    m, x, xc = one_head
    c = discover(m, x, xc, method=method, split_qkv=True, **options)
    r = head_truth_scores(c, ONE_HEAD_TRUTH)
    assert (r["auc_heads_qkv"], r["auc_heads_merged"], r["mib_auroc"]) == (1.0, 1.0, 1.0), r
    # a truth of dead components (they read and write nothing) scores no better than chance
    wrong = HeadTruth(2, 2, {("A1.1", "output"), ("A0.0", "A1.1.q"), ("MLP0", "output")})
    rw = head_truth_scores(c, wrong)
    assert rw["auc_heads_qkv"] <= 0.5 and rw["auc_heads_merged"] <= 0.5, rw


def test_random_method_scores_near_one_half(one_head):
    m, x, xc = one_head
    aucs = [head_truth_scores(discover(m, x, xc, method="random", split_qkv=True, seed=s), ONE_HEAD_TRUTH)
            ["auc_heads_qkv"] for s in range(40)]
    se = statistics.stdev(aucs) / math.sqrt(len(aucs))
    assert abs(statistics.mean(aucs) - 0.5) < 4 * se


def test_evaluate_reports_the_truth_keys_from_any_source(one_head):
    m, x, xc = one_head
    c = discover(m, x, xc, method="eap", split_qkv=True)
    r = evaluate(m, c, (x, xc), truth=ONE_HEAD_TRUTH, curve_points=2)
    for k in ("auc_heads_qkv", "auc_heads_merged", "mib_auroc"):
        assert r[k] == 1.0
    assert set(r["roc_heads_qkv"]) == {"fpr", "tpr"} and len(r["mib_roc"]["tpr"]) == 10
    assert r["truth_rule"] == "by construction" and r["truth_edges_qkv"] == 5 and r["truth_edges_merged"] == 3
    assert "auc_heads_qkv" not in evaluate(m, c, (x, xc), curve_points=2)  # no truth anywhere: no keys
    with pytest.raises(ModcircuitError, match="no head-level ground truth"):
        evaluate(m, c, (x, xc), require_truth=True, curve_points=2)
    m.head_truth = ONE_HEAD_TRUTH  # what a checkpoint restores
    try:
        assert evaluate(m, c, (x, xc), require_truth=True, curve_points=2)["auc_heads_merged"] == 1.0
    finally:
        del m.head_truth
    with pytest.raises(ModcircuitError, match="the ground truth is for 3 layers x 2 heads"):
        evaluate(m, c, (x, xc), truth=HeadTruth(3, 2, {("A2.0", "output")}), curve_points=2)


def test_cli_evaluate_with_a_truth_file(tmp_path, capsys):
    import json

    import modcircuit as mc
    from modcircuit.cli import main

    task = mc.get_task("incontext-regression", seed=0, n_train=64, n_test=32, d_model=16, n_heads=2, d_head=4,
                       d_mlp=16)
    mc.train(task, "vanilla", seed=0, steps=2).save(tmp_path / "run")
    circ = tmp_path / "c.json"
    assert main(["discover", str(tmp_path / "run"), "--method", "eap", "--split-qkv", "--examples", "16",
                 "--out", str(circ), "--json"]) == 0
    truth = HeadTruth(2, 2, {("embed", "output"), ("A1.0", "output"), ("embed", "A1.0.v")}, rule="by hand")
    (tmp_path / "truth.json").write_text(json.dumps(truth.to_dict()))
    capsys.readouterr()
    args = ["evaluate", str(tmp_path / "run"), str(circ), "--truth", str(tmp_path / "truth.json")]
    assert main(args + ["--json"]) in (0, None)
    rep = json.loads(capsys.readouterr().out)
    c = mc.circuits.circuit.load_circuit(circ)
    expected = head_truth_scores(c, truth)
    for k in ("auc_heads_qkv", "auc_heads_merged", "mib_auroc", "truth_edges_qkv", "truth_edges_merged"):
        assert rep[k] == pytest.approx(expected[k]), k
    assert 0 <= rep["auc_heads_qkv"] <= 1 and rep["truth_rule"] == "by hand"
    assert main(args) in (0, None)  # the text form prints the AUCs, not the curves
    out = capsys.readouterr().out
    assert "auc_heads_merged" in out and "mib_auroc" in out and "roc_heads_qkv" not in out and "mib_roc " not in out


def test_report_shows_head_level_roc_curves_for_transformer_cells(tmp_path):
    """Rows as a study stores them (evaluate's report, dicts as JSON text): the report's tables carry the
    three AUCs and its figures the three ROC curves per method."""
    import json

    from modcircuit.report import build_report
    from modcircuit.study import Store

    g = TransformerGraph(2, 2, split_qkv=True)
    truth = HeadTruth(2, 2, {("A0.1", "A1.0.k"), ("A1.0", "output"), ("embed", "output")})
    runs, circuits = [], []
    for regime in ("vanilla", "bimt"):
        for s in range(2):
            S = torch.rand(g.n_dest, g.n_src, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
            rep = head_truth_scores(circuit_of(S, g), truth)
            rk = f"{regime}-{s}"
            runs.append({"key": rk, "study": "syn", "task": "tiny-transformer", "regime": regime, "seed": s,
                         "train_seconds": 1.0, "checkpoint": f"runs/{rk}"})
            circuits.append({"key": f"c-{rk}", "run_key": rk, "study": "syn", "task": "tiny-transformer",
                             "regime": regime, "seed": s, "method": "eap", "threshold": 0.01, "edge_count": None,
                             "logit_gap": 0.1, "n_kept": 5, "n_edges": g.n_edges, "seconds": 0.1,
                             "artifact": f"circuits/c-{rk}.json", **rep})
    with Store(tmp_path / "r.duckdb") as st:
        st.commit({"runs": runs, "circuits": circuits})
    out = build_report(tmp_path / "r.duckdb", tmp_path / "report")
    names = {p.name for p in out.figures}
    for suffix in ("roc-heads-qkv", "roc-heads-merged", "roc-mib"):
        assert f"tiny-transformer-eap-{suffix}.png" in names
    md = out.markdown.read_text()
    assert "head ROC AUC (q/k/v apart)" in md and "head ROC AUC (heads)" in md and "AUROC (MIB)" in md
    assert "tiny-transformer-eap-roc.png" not in names  # no input-level truth here
    assert json.loads(json.dumps(circuits[0]["mib_roc"]))["fractions"][0] == 0.001


@pytest.mark.slow  # trains, runs a study and draws a report: ~5 s idle
def test_a_study_stores_and_reports_head_truth_scores_when_the_task_knows_its_circuit(tmp_path, monkeypatch):
    """A transformer task whose head_truth_for gives a truth: the study's circuit rows carry the AUCs and
    ROC points (also with curves = false), and the report draws the head-level ROC curves."""
    import textwrap

    from modcircuit.report import build_report
    from modcircuit.study import Store, run_study
    from modcircuit.tasks.sequence import SequenceTask

    truth = HeadTruth(2, 2, {("embed", "output"), ("A1.0", "output"), ("embed", "A1.0.v")}, rule="assumed")
    asked = []

    def head_truth_for(self, model):
        asked.append((self.name, model.n_layers))
        return truth

    monkeypatch.setattr(SequenceTask, "head_truth_for", head_truth_for, raising=False)
    spec = tmp_path / "t.toml"
    spec.write_text(textwrap.dedent(f"""
        name = "truth"
        tasks = ["incontext-regression"]
        regimes = ["vanilla"]
        seeds = [0]
        methods = ["eap"]
        thresholds = [0.01]
        split_qkv = true
        curves = false
        results = "{tmp_path / 'r.duckdb'}"
        [task_options.incontext-regression]
        n_train = 64
        n_test = 32
        d_model = 16
        n_heads = 2
        d_head = 4
        d_mlp = 16
        [train]
        steps = 3
        [profile]
        enabled = false
        fresh_process = false
    """))
    res = run_study(spec, progress=False, echo=lambda s: None)
    assert not res.failures and asked == [("incontext-regression", 2)]
    with Store(res.results, read_only=True) as s:
        (row,) = s.rows("circuits")
    for k in ("auc_heads_qkv", "auc_heads_merged", "mib_auroc"):
        assert 0 <= row[k] <= 1, k
    assert row["truth_rule"] == "assumed" and row["truth_edges_qkv"] == 3
    import json

    assert len(json.loads(row["mib_roc"])["tpr"]) == 10 and "fpr" in json.loads(row["roc_heads_merged"])
    rep = build_report(res.results, tmp_path / "report")
    names = {p.name for p in rep.figures}
    assert {f"incontext-regression-eap-{s}.png" for s in ("roc-heads-qkv", "roc-heads-merged", "roc-mib")} <= names
