"""Small classification tasks from scikit-learn (fully offline): two-moons and the 8x8 digits."""
from __future__ import annotations

import torch

from ..errors import ModcircuitError
from .base import Task, register_task


@register_task("two-moons", "make_moons(200, noise 0.1) train and test, MLP [2,20,20,2], cross-entropy")
def two_moons(seed: int = 0, n: int = 200, noise: float = 0.1) -> Task:
    from sklearn.datasets import make_moons  # imported on use: sklearn costs seconds at start-up

    if not (isinstance(n, int) and 4 <= n <= 10_000_000):
        raise ModcircuitError(f"two-moons option n={n!r} must be an integer from 4 to 10000000")
    if not (isinstance(noise, (int, float)) and 0 <= noise <= 100):
        raise ModcircuitError(f"two-moons option noise={noise!r} must be a number from 0 to 100")
    xtr, ytr = make_moons(n, noise=noise, random_state=seed)
    xte, yte = make_moons(n, noise=noise, random_state=seed + 10_000)
    f = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return Task(
        name="two-moons", kind="classification", x_train=f(xtr), y_train=torch.tensor(ytr), x_test=f(xte),
        y_test=torch.tensor(yte), widths=[2, 20, 20, 2], loss="ce", input_names=["x", "y"],
        output_names=["moon 0", "moon 1"], seed=seed, description="two interleaved half circles",
        defaults=dict(steps=10000, lr=2e-3, batch_size=None, lam=1e-3, lam_schedule=[[0.25, 10.0], [0.75, 1.0]],
                      l0=0.2, weight_factor=1.0, agg="sum", top_k=10, swap_every=200),
    )


@register_task("digits", "scikit-learn 8x8 digits, 2-D grid inputs, MLP [64,100,100,10], cross-entropy")
def digits(seed: int = 0, test_size: float = 0.25) -> Task:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = d.data.astype("float32") / 16.0
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=test_size, random_state=seed, stratify=d.target)
    layouts = [{"kind": "grid", "shape": [8, 8]}, {"kind": "grid", "shape": [10, 10]},
               {"kind": "grid", "shape": [10, 10]}, {"kind": "ring"}]
    return Task(
        name="digits", kind="classification", x_train=torch.tensor(xtr), y_train=torch.tensor(ytr),
        x_test=torch.tensor(xte), y_test=torch.tensor(yte), widths=[64, 100, 100, 10], loss="ce",
        layouts=layouts, input_names=[f"px{r},{c}" for r in range(8) for c in range(8)],
        output_names=[str(k) for k in range(10)], seed=seed, description="handwritten digits, 8x8 pixels",
        defaults=dict(steps=5000, lr=1e-3, batch_size=128, lam=1e-3, lam_schedule=[[0.25, 10.0], [0.5, 100.0]],
                      l0=0.5, weight_factor=2.0, agg="mean", top_k=30, swap_every=500, swap_outputs=True),
    )
