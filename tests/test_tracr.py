"""tracr-compiled RASP programs as GeometricTransformers: logits equal tracr's, outputs equal the RASP
program's, the known circuit follows the residual layout, and the errors are one line."""
from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

import modcircuit as mc
from modcircuit.errors import ModcircuitError

needs_tracr = pytest.mark.skipif(importlib.util.find_spec("tracr") is None,
                                 reason="the [tracr] extra (tracr-pypi, jax) is not installed")


def test_unknown_program_is_one_line_listing_the_programs():
    with pytest.raises(ModcircuitError) as e:
        mc.tracr_model("revers")
    assert str(e.value) == "unknown tracr program 'revers'; allowed: frac_prevs, histogram, neighbours, reverse, sort"


def test_without_tracr_the_error_names_the_extra(monkeypatch):
    from modcircuit.rasp import compiled

    monkeypatch.setattr(compiled, "_COMPILED", {})
    for mod in ("tracr", "tracr.rasp", "tracr.compiler", "haiku", "jax"):
        monkeypatch.setitem(sys.modules, mod, None)  # `import tracr...` now raises ImportError
    with pytest.raises(ModcircuitError) as e:
        mc.tracr_model("histogram")
    msg = str(e.value)
    assert "modcircuit[tracr]" in msg and "tracr-pypi" in msg and "\n" not in msg


def _check_against_tracr(name):
    """Our logits vs tracr's own forward pass at every position of every valid input, and the outputs
    after BOS vs the RASP program evaluated directly (an independent check of what the model computes)."""
    from tracr.rasp import rasp

    from modcircuit.rasp.compiled import compile_program, tracr_logits
    from modcircuit.rasp.programs import SPECS
    from modcircuit.rasp.task import valid_sequences

    model, truth, task = mc.tracr_model(name)
    assembled = compile_program(name)
    x = torch.cat([task.x_train, task.x_test])
    with torch.no_grad():
        ours = model.logits_all(x)
    theirs = tracr_logits(assembled, x)
    assert ours.shape == theirs.shape == (len(x), SPECS[name].seq_len + 1, model.d_out)
    assert theirs.abs().max() > 0.5  # tracr's outputs are not all zero: the comparison means something
    err = (ours - theirs).abs().max().item()
    assert err <= 1e-5, f"{name}: max |ours - tracr| = {err}"
    # every position after BOS carries the program's output
    seqs = valid_sequences(name)
    order = torch.randperm(len(seqs), generator=torch.Generator().manual_seed(0)).tolist()
    sop = SPECS[name].build()
    expected = [rasp.evaluate(sop, list(seqs[i])) for i in order]
    if rasp.is_numerical(sop):
        assert torch.allclose(ours[:, 1:, 0].double(), torch.tensor(expected, dtype=torch.float64), atol=1e-4)
    else:
        names = task.output_names
        got = [[names[k] for k in row] for row in ours[:, 1:].argmax(-1).tolist()]
        assert got == [[str(v) for v in e] for e in expected]
    return model, truth, task


@needs_tracr
def test_histogram_logits_equal_tracr_and_its_known_circuit():
    model, truth, task = _check_against_tracr("histogram")
    # histogram = width of select(tokens, tokens, ==): one head (q, k: tokens and tracr's BOS term; v: the
    # BOS flag) writes 1/(width+1) for the MLP that turns it into the width, which is the output.
    assert (model.n_layers, model.n_heads, model.attention_dir, model.layernorm) == (1, 1, "bidirectional", False)
    assert truth.edges == {("embed", "A0.0.q"), ("embed", "A0.0.k"), ("embed", "A0.0.v"), ("embed", "MLP0"),
                           ("A0.0", "MLP0"), ("MLP0", "output")}
    assert task.metric_positions(task.x_test) == [1, 2, 3, 4]
    assert task.evaluate(model)["accuracy"] == 1.0


@needs_tracr
def test_truth_follows_the_weights():
    """Zeroing the head's query map removes its q and k inputs (the scores no longer depend on either; both
    are read through W_Q^T W_K) but not its v input: the truth is read off the model."""
    from modcircuit.rasp.compiled import head_truth

    model, truth, _ = mc.tracr_model("histogram")
    with torch.no_grad():
        model.blocks[0].W_Q.zero_()
    assert head_truth(model).edges == truth.edges - {("embed", "A0.0.q"), ("embed", "A0.0.k")}
    with torch.no_grad():
        model.blocks[0].W_out.zero_()  # the MLP no longer reaches the output: nothing is on a path to it
    assert head_truth(model).edges == frozenset()


@needs_tracr
@pytest.mark.slow
@pytest.mark.parametrize("name", ["reverse", "frac_prevs", "sort", "neighbours"])
def test_logits_equal_tracr(name):
    _check_against_tracr(name)


@needs_tracr
@pytest.mark.slow
def test_reverse_known_circuit():
    """reverse: A0.0 + MLP0 compute length (selector width), MLP1 opposite = length - index - 1, A2.0
    selects the key whose index equals the query's opposite (q: opposite index, k: indices) and copies its
    token (v) to the output."""
    model, truth, _ = mc.tracr_model("reverse")
    assert truth.edges == {
        ("embed", "A0.0.q"), ("embed", "A0.0.k"), ("embed", "A0.0.v"), ("A0.0", "MLP0"), ("embed", "MLP0"),
        ("MLP0", "MLP1"), ("embed", "MLP1"),
        ("MLP1", "A2.0.q"), ("embed", "A2.0.q"), ("embed", "A2.0.k"), ("embed", "A2.0.v"),
        ("A2.0", "output")}


@needs_tracr
@pytest.mark.slow
def test_neighbours_two_heads_and_an_empty_attention_layer():
    """neighbours: MLP0 computes the left and right indices, layer 1's two heads fetch the two neighbours'
    tokens, MLP1 compares them. Layer 0's attention is empty: tracr fills it with zero heads, which write
    nothing and so are in no edge."""
    model, truth, _ = mc.tracr_model("neighbours")
    assert (model.n_layers, model.n_heads) == (2, 2)
    assert float(model.blocks[0].W_Q.detach().abs().sum() + model.blocks[0].W_O.detach().abs().sum()) == 0.0
    heads = [("embed", f"A1.{h}.{p}") for h in (0, 1) for p in "qkv"]
    assert truth.edges == {*heads, ("embed", "MLP0"), ("MLP0", "A1.0.q"), ("MLP0", "A1.1.q"), ("A1.0", "MLP1"),
                           ("A1.1", "MLP1"), ("embed", "MLP1"), ("MLP1", "output")}


@needs_tracr
@pytest.mark.slow
def test_a_compiled_model_exports_to_transformer_lens_exactly():
    pytest.importorskip("transformer_lens")
    model, _, task = mc.tracr_model("neighbours")
    hooked = mc.to_transformer_lens(model)
    with torch.no_grad():
        assert torch.equal(hooked(task.x_test), model.logits_all(task.x_test))
        assert torch.equal(mc.from_transformer_lens(hooked).logits_all(task.x_test), model.logits_all(task.x_test))


@needs_tracr
@pytest.mark.slow
def test_cli_writes_a_run_that_discovery_reads(tmp_path):
    from typer.testing import CliRunner

    from modcircuit.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["tracr", "histogram", "--out", str(tmp_path / "run"), "--json"])
    assert res.exit_code == 0, res.output
    assert '"true_edges": 6' in res.output
    res = runner.invoke(app, ["discover", str(tmp_path / "run"), "--method", "acdc", "--split-qkv",
                              "--out", str(tmp_path / "c.json"), "--json"])
    assert res.exit_code == 0, res.output
    run = mc.load(tmp_path / "run")
    circuit = mc.load_circuit(tmp_path / "c.json", run.model)
    truth = run.task().head_truth_for(run.model)
    assert circuit.edge_set() & truth.edges  # ACDC keeps part of the known circuit
