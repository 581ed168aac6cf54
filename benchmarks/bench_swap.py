"""Closed-form swap search vs brute force (re-evaluate the whole connection cost per candidate partner),
on the MNIST-size net [784,100,100,10] with BIMT's MNIST geometry. Both must choose the same swaps.
Prints the speed ratio (goal: >= 50x)."""
import time

import torch

import modcircuit as mc
from modcircuit.train.regimes import connection_cost
from modcircuit.train.swap import placement_cost, swap_deltas, swap_neurons, unit_importance

torch.set_num_threads(1)
torch.manual_seed(0)
LAYOUTS = [{"kind": "grid", "shape": [28, 28]}, {"kind": "grid", "shape": [10, 10]},
           {"kind": "grid", "shape": [10, 10]}, {"kind": "ring"}]
WF, L0, AGG, TOP_K = 2.0, 0.5, "mean", 30


def search(model, layer, closed_form: bool) -> list[tuple[int, int]]:
    """One relocation pass over a layer; returns the swaps made."""
    made = []
    order = torch.argsort(unit_importance(model, layer), descending=True)[:TOP_K].tolist()
    A = placement_cost(model, layer, WF, AGG) if closed_form else None
    for unit in order:
        if closed_form:
            delta = swap_deltas(A, unit)
        else:
            base = connection_cost(model, WF, L0, AGG).item()
            delta = torch.zeros(model.widths[layer], dtype=torch.float64)
            for j in range(model.widths[layer]):
                swap_neurons(model, layer, unit, j)
                delta[j] = connection_cost(model, WF, L0, AGG).item() - base
                swap_neurons(model, layer, unit, j)
        best = int(torch.argmin(delta))
        if delta[best] < -1e-9:
            swap_neurons(model, layer, unit, best)
            if closed_form:
                A[[unit, best]] = A[[best, unit]]
            made.append((unit, best))
    return made


def main():
    model = mc.MLP([784, 100, 100, 10], "silu", LAYOUTS)
    fast, slow = model, model.clone()
    t = time.perf_counter()
    fast_swaps = [search(fast, layer, True) for layer in (1, 2)]
    t_fast = time.perf_counter() - t
    t = time.perf_counter()
    slow_swaps = [search(slow, layer, False) for layer in (1, 2)]
    t_slow = time.perf_counter() - t
    same = fast_swaps == slow_swaps and all(torch.equal(a, b) for a, b in zip(fast.state_dict().values(),
                                                                              slow.state_dict().values()))
    print(f"net [784,100,100,10], top_k {TOP_K}, hidden layers 1-2: {sum(map(len, fast_swaps))} swaps")
    print(f"closed form: {t_fast * 1e3:.1f} ms   brute force: {t_slow * 1e3:.0f} ms")
    print(f"same swaps chosen: {'yes' if same else 'NO'}")
    print(f"speed ratio (brute / closed form): {t_slow / t_fast:.0f}x   (goal >= 50x)")


if __name__ == "__main__":
    main()
