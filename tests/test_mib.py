"""MIB / EAP-IG graph files (export, import, round trip, other models refused) and MIB's CPR / CMD."""
import json
import re

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import modcircuit as mc
from modcircuit.circuits.circuit import Circuit
from modcircuit.circuits.discover import top_k_mask
from modcircuit.circuits.graph import TransformerGraph
from modcircuit.circuits.metrics import MIB_FRACTIONS, mib_areas, patch_context
from modcircuit.circuits.mib import load_mib, mib_dict
from modcircuit.cli import app, main
from modcircuit.errors import ModcircuitError
from modcircuit.nn.mlp import MLP
from modcircuit.nn.transformer import GeometricTransformer

torch.set_num_threads(1)


def tiny(n_layers=2, n_heads=2, d_model=16, seed=0):
    torch.manual_seed(seed)
    m = GeometricTransformer(d_vocab=7, n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=4, d_mlp=16,
                             n_ctx=3, d_out=5, layernorm=True)
    x, xc = torch.randint(0, 7, (24, 3)), torch.randint(0, 7, (24, 3))
    return m, (x, xc)


def same(a, b):
    return torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))


@pytest.mark.parametrize("split_qkv", [True, False])
def test_round_trip_keeps_scores_and_mask(tmp_path, split_qkv):
    model, data = tiny()
    c = mc.discover(model, data, method="eap", top_k=9, split_qkv=split_qkv)
    path = c.to_mib(tmp_path / "g.json", model)
    d = json.loads(path.read_text())
    # MIB's layout: q/k/v always apart, so an unsplit head-input edge is written three times
    n_head_inputs = sum(1 for k, s in zip(*torch.nonzero(c.graph.allowed, as_tuple=True))
                        if k < c.graph.dest_out and k != c.graph.dest_mlp(c.graph.dest_layer(int(k))))
    assert len(d["edges"]) == c.n_edges + (0 if split_qkv else 2 * n_head_inputs)
    assert len(d["edges"]) == TransformerGraph(2, 2, True).n_edges
    assert set(d["nodes"]) == {"input", "a0.h0", "a0.h1", "m0", "a1.h0", "a1.h1", "m1", "logits"}
    assert all(re.fullmatch(r"(input|a\d\.h\d|m\d)->(a\d\.h\d<[qkv]>|m\d|logits)", n) for n in d["edges"])
    assert d["cfg"] == {"n_layers": 2, "n_heads": 2, "d_model": 16, "parallel_attn_mlp": False}
    kept_head_inputs = sum(int(c.mask[0][c.graph.dest_attn(l, h)].sum()) for l in range(2) for h in range(2))
    assert sum(e["in_graph"] for e in d["edges"].values()) == 9 + (0 if split_qkv else 2 * kept_head_inputs)
    back = load_mib(path, model)
    assert back.graph == c.graph and torch.equal(back.mask[0], c.mask[0]) and same(back.scores[0], c.scores[0])
    assert (back.method, back.metric, back.ablation, back.model_fingerprint) == \
        (c.method, c.metric, c.ablation, c.model_fingerprint)
    if not split_qkv:  # the merged circuit read apart: each head input's three copies carry its score and flag
        apart = load_mib(path, model, split_qkv=True)
        g = apart.graph
        for l in range(2):
            for h in range(2):
                for q in range(3):
                    k, k0 = g.dest_attn(l, h, q), c.graph.dest_attn(l, h)
                    assert torch.equal(apart.mask[0][k], c.mask[0][k0]) and same(apart.scores[0][k], c.scores[0][k0])


def test_a_foreign_graph_loads_split_and_merges_only_when_q_k_v_agree(tmp_path):
    model, data = tiny()
    c = mc.discover(model, data, method="eap", top_k=5, split_qkv=True)
    d = mib_dict(c, model)
    del d["modcircuit"], d["format"]  # as EAP-IG writes it
    path = tmp_path / "eap.json"
    path.write_text(json.dumps(d))
    back = load_mib(path, model)
    assert back.graph.split_qkv and back.method == "mib-import" and back.model_fingerprint is None
    assert torch.equal(back.mask[0], c.mask[0]) and same(back.scores[0], c.scores[0])
    with pytest.raises(ModcircuitError, match="merge only when they agree"):
        load_mib(path, model, split_qkv=False)


def test_gpt2_small_graph_has_mibs_edge_count():
    # MIB lists 32,491 edges for GPT-2 small (12 layers x 12 heads): the same graph
    assert TransformerGraph(12, 12, True).n_edges == 32491


def edit(tmp_path, d, name="bad.json"):
    p = tmp_path / name
    p.write_text(json.dumps(d))
    return p


def test_files_for_other_models_and_broken_files_are_one_line_errors(tmp_path):
    model, data = tiny()
    c = mc.discover(model, data, method="eap", top_k=5, split_qkv=True)
    good = mib_dict(c, model)
    for other, why in [(tiny(n_layers=3)[0], "2 layers x 2 heads, d_model 16; this model has 3 x 2"),
                       (tiny(n_heads=4)[0], "this model has 2 x 4"), (tiny(d_model=32)[0], "d_model 32")]:
        with pytest.raises(ModcircuitError, match=re.escape(why)):
            load_mib(edit(tmp_path, good), other)
    with pytest.raises(ModcircuitError, match="found on another model"):  # same shape, other weights
        load_mib(edit(tmp_path, good), tiny(seed=1)[0])
    assert load_mib(edit(tmp_path, good), tiny(seed=1)[0], allow_other_model=True).n_kept == 5
    d = json.loads(json.dumps(good))
    d["edges"]["a1.h0->a0.h0<q>"] = {"score": 1.0, "in_graph": True}
    with pytest.raises(ModcircuitError, match="'a1.h0->a0.h0<q>' is not an edge of this model's graph"):
        load_mib(edit(tmp_path, d), model)
    d = json.loads(json.dumps(good))
    del d["edges"]["input->logits"]
    with pytest.raises(ModcircuitError, match="'input->logits' is missing"):
        load_mib(edit(tmp_path, d), model)
    d = json.loads(json.dumps(good))
    d["edges"]["input->logits"] = {"score": "high", "in_graph": True}
    with pytest.raises(ModcircuitError, match="must be"):
        load_mib(edit(tmp_path, d), model)
    for key, value, why in [("metric", "nll", "is not one of kl, mse"), ("model_fingerprint", 7, "must be of type str")]:
        d = json.loads(json.dumps(good))
        d["modcircuit"][key] = value
        with pytest.raises(ModcircuitError, match=f"modcircuit.{key} .* {why}"):
            load_mib(edit(tmp_path, d), model)
    (tmp_path / "junk.json").write_text("{nope")
    for p, why in [(tmp_path / "junk.json", "is not JSON"), (tmp_path / "none.json", "does not exist"),
                   (edit(tmp_path, {"edges": {}}), "needs objects 'cfg' and 'edges'")]:
        with pytest.raises(ModcircuitError, match=why) as e:
            load_mib(p, model)
        assert "\n" not in str(e.value)
    mlp_circuit = mc.discover(MLP([2, 3, 2]), (torch.randn(8, 2), torch.randn(8, 2)), method="magnitude",
                              ablation="zero")
    with pytest.raises(ModcircuitError, match="no MIB form"):
        mib_dict(mlp_circuit, model)


def test_cli_export_import_and_another_models_file(tmp_path, capsys):
    task = mc.get_task("modular-addition-transformer", seed=0, p=5, d_model=16, n_heads=2, d_head=4, d_mlp=16)
    mc.train(task, "vanilla", seed=0, steps=2).save(tmp_path / "run")
    mc.train(mc.get_task("modular-addition-transformer", seed=0, p=5, d_model=16, n_heads=4, d_head=4, d_mlp=16),
             "vanilla", seed=0, steps=2).save(tmp_path / "other")
    cli = CliRunner()
    r = cli.invoke(app, ["discover", str(tmp_path / "run"), "--method", "eap", "--top-k", "6", "--split-qkv",
                         "--out", str(tmp_path / "c.json"), "--json", "--examples", "16"])
    assert r.exit_code == 0, r.output
    r = cli.invoke(app, ["export-mib", str(tmp_path / "run"), str(tmp_path / "c.json"), "-o", str(tmp_path / "g.json")])
    assert r.exit_code == 0, r.output
    r = cli.invoke(app, ["import-mib", str(tmp_path / "run"), str(tmp_path / "g.json"), "-o", str(tmp_path / "back.json")])
    assert r.exit_code == 0, r.output
    a, b = mc.load_circuit(tmp_path / "c.json"), mc.load_circuit(tmp_path / "back.json")
    assert torch.equal(a.mask[0], b.mask[0]) and same(a.scores[0], b.scores[0])
    rc = main(["import-mib", str(tmp_path / "other"), str(tmp_path / "g.json"), "-o", str(tmp_path / "x.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "1 layers x 2 heads" in err and "1 x 4" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.json").exists()


# ---- CPR / CMD --------------------------------------------------------------------------------------
def test_cpr_cmd_match_a_hand_computation():
    torch.manual_seed(0)
    model = MLP([3, 4, 2], activation="relu")
    x, xc = torch.randn(32, 3), torch.randn(32, 3)
    c = mc.discover(model, (x, xc), method="eap", threshold=0.0)
    rep = mc.evaluate(model, c, (x, xc))
    n = c.n_edges
    assert n == 20
    counts = [max(1, int(p * n)) for p in MIB_FRACTIONS]
    assert rep["mib_curve"]["edges"] == counts == [1, 1, 1, 1, 1, 1, 2, 4, 10, 20]
    # by hand: KL of the top-k circuit and of the empty circuit, then numpy's trapezoid over k / n
    ctx = patch_context(model, c, x, xc)
    d_empty = ctx.metric(ctx.forward(ctx.full_masks(False))).item()
    f = np.array([1 - ctx.metric(ctx.forward(top_k_mask(c.scores, k))).item() / d_empty for k in counts])
    xs = np.array(counts) / n
    assert rep["mib_curve"]["faithfulness"] == pytest.approx(f.tolist(), abs=1e-12)
    assert f[-1] == pytest.approx(1.0, abs=1e-12)
    assert rep["cpr"] == pytest.approx(np.trapezoid(f, xs), abs=1e-12)
    assert rep["cmd"] == pytest.approx(np.trapezoid(np.abs(1 - f), xs), abs=1e-12)
    assert rep["cpr"] != pytest.approx(rep["curve_area"])  # a different quantity from the log-scale area


@pytest.mark.parametrize("widths, x0", [([4, 5], 1 / 20), ([40, 25], 0.001)])
def test_a_circuit_faithful_at_every_point_has_cmd_zero(widths, x0):
    # a linear model whose output depends on one weight: the top edge alone is the whole model
    model = MLP(widths)  # one Linear: no activation
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.linears[0].weight[1, 2] = 3.0
    torch.manual_seed(0)
    x, xc = torch.randn(16, widths[0]), torch.randn(16, widths[0])
    scores = [torch.zeros(widths[1], widths[0], dtype=torch.float64)]
    scores[0][1, 2] = 1.0
    c = Circuit(scores, [scores[0] > 0], method="hand", metric="mse", ablation="resample", widths=list(widths))
    rep = mc.evaluate(model, c, (x, xc))
    assert rep["mib_curve"]["faithfulness"] == pytest.approx([1.0] * 10, abs=1e-12)
    assert rep["cmd"] == pytest.approx(0.0, abs=1e-12)
    # MIB's trapezoids start at the first point, not at 0: CPR = 1 - x_0 (0.999 from 1000 edges on)
    assert rep["cpr"] == pytest.approx(1 - x0, abs=1e-12)


def test_mib_areas_of_given_curves():
    assert mib_areas({"edges": [1, 5, 10], "faithfulness": [0.0, 1.0, 1.0]}) == pytest.approx((0.7, 0.2))
    assert mib_areas({"edges": [1, 2], "faithfulness": [None, 1.0]}) == (None, None)


def test_transformer_evaluate_gives_cpr_and_cmd_in_range():
    model, data = tiny()
    c = mc.discover(model, data, method="eap", top_k=9, split_qkv=True)
    rep = mc.evaluate(model, c, data)
    assert rep["mib_curve"]["edges"][-1] == c.n_edges and rep["mib_curve"]["faithfulness"][-1] == pytest.approx(1.0)
    x0 = rep["mib_curve"]["edges"][0] / c.n_edges
    assert 0.0 <= rep["cmd"] <= 1.0 and rep["cpr"] <= 1.0 and rep["cpr"] + rep["cmd"] >= 1 - x0 - 1e-9
