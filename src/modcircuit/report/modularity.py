"""The report's modularity section per task: regime x Newman Q, clusterability C and cross-module
share (with accuracy and connection cost beside them), and one drawing of each regime's network."""
from __future__ import annotations

from pathlib import Path

# (column, label, scale, lower_is_better)
MODULARITY = [("modularity_q", "Newman Q", 1, False), ("clusterability", "C (co-cluster W² share)", 1, False),
              ("cross_module_share", "cross-module |W| share", 1, True), ("test_accuracy", "model test acc.", 1, False),
              ("test_mse", "model test MSE", 1, True), ("connection_cost", "connection cost", 1, True)]

EXPLAINED = ("Newman Q: modularity of the graph of neurons (every layer) joined by |W|, under the communities "
             "networkx's Louvain finds (seeded); C: mean over weight matrices of the share of W² inside 4 "
             "spectral co-clusters of |W| (matrices with a side under 4 left out), the quantity clusterability "
             "training raises; cross-module share (MLPs): share of |W| on edges between different outputs' "
             "sub-networks (inputs grouped by the task's ground truth where each input feeds one output).")


def modularity_section(doc, task, comp, groups, tmp: Path, figs: list, artifacts: Path, figures: bool) -> None:
    from .build import _present, _stat_table

    cols = _present(comp, MODULARITY)
    if not any(c[0] in ("modularity_q", "clusterability") for c in cols):
        return  # runs from before these metrics were stored
    doc.h(3, f"{task}: modularity by regime")
    h, rs = _stat_table(comp, groups, cols)
    doc.table(h, rs, "mean ± 95% CI over seeds. " + EXPLAINED)
    if figures:
        _network_grid(doc, task, comp, groups, tmp, figs, artifacts)


def _network_grid(doc, task, comp, groups, tmp, figs, artifacts) -> None:
    """One drawing per group (regime and configuration): its lowest seed's network."""
    try:
        import matplotlib.pyplot as plt

        from ..errors import ModcircuitError
        from ..train import load
        from ..viz import draw
    except ImportError as e:
        doc.p(f"(network drawings unavailable: {e})")
        return
    from .build import _save
    from .values import fmt_num

    runs = []
    for r in groups:
        rows = comp[comp["group"] == r].sort_values("seed")
        if not rows.empty and (artifacts / str(rows.iloc[0].get("checkpoint", "")) / "model.json").is_file():
            runs.append((r, rows.iloc[0]))
    if not runs:
        return
    ncol = min(4, len(runs))
    nrow = -(-len(runs) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 4.2 * nrow), squeeze=False)
    for ax in axes.flat[len(runs):]:
        ax.set_axis_off()
    for ax, (r, row) in zip(axes.flat, runs):
        q = row.get("modularity_q")
        try:
            draw(load(artifacts / str(row["checkpoint"])), ax=ax, legend=False,
                 title=f"{r} (seed {row['seed']}, Q {fmt_num(q if q == q else None)})")
        except ModcircuitError as e:
            ax.set_title(f"{r}: {e}"[:60])
            ax.set_axis_off()
    fig.tight_layout()
    doc.img(_save(fig, tmp, f"{task.replace('/', '_')}-regime-networks.png", figs),
            f"{task}: each regime's network (lowest seed), line width ~ |W|")
    plt.close(fig)
