"""The induction tasks: data, loss positions, patching pairs, and the previous-token / induction head detector,
checked on a 2-layer transformer whose heads are written by hand so the mechanism is exact."""
from __future__ import annotations

import math

import pytest
import torch

import modcircuit as mc
from modcircuit.circuits.induction_heads import detect_induction_heads, repeat_mask
from modcircuit.circuits.truth import HeadTruth
from modcircuit.errors import ModcircuitError
from modcircuit.nn.transformer import GeometricTransformer
from modcircuit.tasks import get_task
from modcircuit.tasks.induction import IGNORE, induction_data

SCALE = 30.0  # attention logit of the chosen key over the others: softmax puts ~1 - e^-30 on it


def hand_built(task, with_mlps: bool = False, copy_through_mlp: bool = False) -> GeometricTransformer:
    """A[0].0 attends from t to t-1 by position and writes the token it sees into a "previous token"
    subspace; A[1].0 queries with the current token, keys on that subspace (and avoids position 0, whose
    "previous token" is itself), and copies the attended token to a "copy" subspace that W_U reads.
    Heads A0.1 and A1.1 are all zeros. copy_through_mlp: A1.0 writes the copy into a subspace only MLP1
    moves on to the one W_U reads (so the MLP is part of the mechanism)."""
    V, T = task.arch["d_vocab"], task.arch["n_ctx"]
    TOK, POS, PREV, COPY, OUT = 0, V, V + T, 2 * V + T, 3 * V + T
    d_model, dh = 4 * V + T, V + 1
    m = GeometricTransformer(n_layers=2, d_model=d_model, n_heads=2, d_head=dh, d_mlp=V if with_mlps else 1, n_ctx=T,
                             d_out=V, d_vocab=V, layernorm=False, attn_only=not with_mlps)
    c = SCALE * math.sqrt(dh)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.W_E[TOK:TOK + V] = torch.eye(V)
        m.W_pos[POS:POS + T] = torch.eye(T)
        b0, b1 = m.blocks
        for j in range(T - 1):  # head A0.0, dims 0..T-2: query at position j+1 meets key at position j
            b0.W_Q[j, POS + j + 1] = c
            b0.W_K[j, POS + j] = 1.0
        b0.W_V[:V, TOK:TOK + V] = torch.eye(V)
        b0.W_O[PREV:PREV + V, :V] = torch.eye(V)
        b1.W_Q[:V, TOK:TOK + V] = c * torch.eye(V)  # head A1.0: current token vs previous token
        b1.W_K[:V, PREV:PREV + V] = torch.eye(V)
        b1.b_Q[V] = c  # and a constant query dimension that keys of position 0 score -SCALE on
        b1.W_K[V, POS] = -1.0
        b1.W_V[:V, TOK:TOK + V] = torch.eye(V)
        dest = OUT if copy_through_mlp else COPY
        b1.W_O[dest:dest + V, :V] = torch.eye(V)
        if copy_through_mlp:
            b1.W_in[:, OUT:OUT + V] = torch.eye(V)
            b1.W_out[COPY:COPY + V] = torch.eye(V)
        m.W_U[:, COPY:COPY + V] = torch.eye(V)
    return m


EXPECTED = {("A0.0", "A1.0.k"), ("embed", "A1.0.q"), ("embed", "A1.0.v"), ("A1.0", "output"),
            ("embed", "A0.0.q"), ("embed", "A0.0.k"), ("embed", "A0.0.v")}


@pytest.fixture(scope="module")
def task():
    return get_task("induction-attn-only", seed=3, n_train=64, n_test=256)


def test_data_structure_and_targets():
    g = torch.Generator().manual_seed(0)
    x, y = induction_data(200, 20, 24, 3, g)
    assert x.shape == y.shape == (200, 20)
    mask = y != IGNORE
    lengths = mask.sum(1)
    assert lengths.min() >= 3 and lengths.max() <= 10 and len(set(lengths.tolist())) > 3  # varies per example
    for i in range(200):
        L = int(lengths[i])
        assert torch.equal(x[i, 20 - L:], x[i, 20 - 2 * L:20 - L])  # the repeat
        assert len(set(x[i, :20 - L].tolist())) == 20 - L  # prefix and segment distinct
        assert torch.equal(y[i, 20 - L:-1], x[i, 21 - L:]) and y[i, -1] == x[i, 20 - L]
    assert torch.equal(repeat_mask(x), mask)


def test_hand_built_model_is_exact_and_detected(task):
    m = hand_built(task)
    assert task.evaluate(m)["accuracy"] == 1.0
    found = task.detect_heads(m)
    assert found.prev_heads == [(0, 0)] and found.induction_heads == [(1, 0)]
    assert found.prev_scores[0, 0] > 0.99 and found.induction_scores[1, 0] > 0.99
    assert found.prev_scores[:, 1].max() < 0.2 and found.induction_scores[:, 1].max() < 0.2
    truth = task.head_truth_for(m)
    assert isinstance(truth, HeadTruth) and set(truth.edges) == EXPECTED
    assert truth.n_layers == 2 and truth.n_heads == 2


def test_negatives(task):
    torch.manual_seed(0)
    assert task.head_truth_for(task.build_model()) is None  # random weights: no induction head
    assert "no induction head" in task.truth_reason
    m = hand_built(task)
    with torch.no_grad():  # without the previous-token head the induction head has nothing to match
        m.blocks[0].W_Q.zero_()
    assert task.head_truth_for(m) is None and "no induction head" in task.truth_reason
    x, y = task.held_out(64)
    with pytest.raises(ModcircuitError, match="not a repeated sequence"):
        repeat_mask(torch.roll(x, 1, 1)[:, :-1].contiguous())
    with pytest.raises(ModcircuitError, match="token GeometricTransformer"):
        detect_induction_heads(mc.MLP([2, 3, 2]), x, y)


def test_mlps_enter_only_where_the_model_needs_them():
    t = get_task("induction", seed=1, n_train=64, n_test=64)
    found = t.detect_heads(hand_built(t, with_mlps=True))  # MLPs present but zero: the heads alone
    assert found.accuracy == 1.0 and set(found.truth.edges) == EXPECTED
    assert found.mlp_drops["MLP0"] == 0 and found.mlp_drops["MLP1"] == 0
    found = t.detect_heads(hand_built(t, with_mlps=True, copy_through_mlp=True))  # MLP1 relays the copy
    assert found.accuracy == 1.0 and found.mlp_drops["MLP1"] > 0.5 and found.mlp_drops["MLP0"] == 0
    relayed = EXPECTED - {("A1.0", "output")} | {("A1.0", "MLP1"), ("MLP1", "output")}
    assert set(found.truth.edges) == relayed
    with pytest.raises(ModcircuitError, match="needs the targets"):
        detect_induction_heads(hand_built(t, with_mlps=True), *t.held_out(8)[:1])


def test_patching_pairs_keep_the_structure(task):
    clean, corrupt, labels = task.patching_pairs("test", 50, seed=7)
    assert clean.shape == corrupt.shape == (50, task.arch["n_ctx"]) and labels.shape == (50,)
    assert torch.equal(repeat_mask(clean), repeat_mask(corrupt))  # the same repeat lengths
    assert (clean != corrupt).float().mean() > 0.8  # fresh tokens
    assert torch.equal(task.metric_positions(clean), repeat_mask(clean))
    again = task.patching_pairs("test", 50, seed=7)
    assert all(torch.equal(a, b) for a, b in zip((clean, corrupt, labels), again))


def test_discover_reads_the_repeated_half(task):
    circuit = mc.discover(hand_built(task), task, method="eap", examples=16, top_k=5)
    mask = circuit.extra["positions"]["mask"]
    clean, _, _ = task.patching_pairs("test", 16)
    assert torch.equal(torch.tensor(mask, dtype=torch.bool), repeat_mask(clean))


@pytest.mark.parametrize("option, value, fragment", [
    ("vocab", 19, "vocab 19 is too small"), ("seq_len", 14, "seq_len 14 is too short"),
    ("seq_len", 17, "seq_len 17 must be even"), ("min_repeat", 1, "min_repeat 1 must be in 2..12"),
    ("min_repeat", 13, "min_repeat 13 must be in 2..12"),
])
def test_bad_options(option, value, fragment):
    with pytest.raises(ModcircuitError, match=fragment):
        get_task("induction", **{option: value})


def test_truth_is_stored_in_the_checkpoint(tmp_path, monkeypatch, task):
    from modcircuit.train import checkpoint

    run = mc.train(task, regime="vanilla", steps=1)  # too short to learn: the reason is kept
    assert run.head_truth is None and "no induction head" in run.head_truth_reason
    truth = task.head_truth_for(hand_built(task))
    run.head_truth = truth
    loaded = checkpoint.load(run.save(tmp_path / "ck"))
    assert loaded.head_truth == truth and loaded.model.head_truth == truth


def test_ablation_forward_without_ablations_is_the_model():
    from modcircuit.circuits.induction_heads import _logits

    t = get_task("induction", seed=2, n_train=8, n_test=8)
    torch.manual_seed(2)
    m = t.build_model()
    x = t.x_test
    assert torch.allclose(_logits(m, x), m.logits_all(x), atol=1e-5)
    changed = _logits(m, x, [("MLP0", "output")])
    assert not torch.allclose(changed, m.logits_all(x), atol=1e-3)


@pytest.mark.slow
def test_a_short_training_run_learns_induction():
    """~11 s of CPU on one idle core (400 steps of a 16-token, 20-word version)."""
    task = get_task("induction-attn-only", seed=0, n_train=1024, n_test=128, seq_len=16, vocab=20)
    run = mc.train(task, "vanilla", seed=0, steps=400, batch_size=64)
    assert run.metrics["test_accuracy"] >= 0.9
    assert run.head_truth is not None and run.model.head_truth == run.head_truth
    assert any(d.endswith(".k") and s.startswith("A0.") for s, d in run.head_truth.edges)
