"""`modcircuit draw`: a checkpoint's network drawing, optionally with a circuit overlaid.

    modcircuit draw runs/moons-bimt-0 -o moons.png
    modcircuit draw runs/moons-bimt-0 --circuit circuit.json -o c.svg
    modcircuit draw runs/mnist-bimt-0 --html -o net.html

A circuit found on another model than the checkpoint's is refused unless --allow-other-model.
"""
from __future__ import annotations

from ..jsonout import dumps
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import ModcircuitError


def load_circuit_file(path: Path, model, allow_other_model: bool = False):
    try:
        from ..circuits import load_circuit
    except ImportError as e:
        raise ModcircuitError(f"--circuit {str(path)!r} needs modcircuit.circuits, which failed to import: {e}")
    return load_circuit(path, model, allow_other_model)


def draw_cmd(
    run: Annotated[Path, typer.Argument(help="checkpoint folder written by `modcircuit train`")],
    out: Annotated[Path, typer.Option("-o", "--out", help="output file; the extension picks the format: "
                                                          ".png, .svg, .pdf or .html")],
    circuit: Annotated[Optional[Path], typer.Option("--circuit", help="circuit JSON (from `modcircuit discover`) "
                                                                      "to overlay: its edges strong, the rest faded")] = None,
    html: Annotated[bool, typer.Option("--html", help="interactive plotly page (hover, zoom, circuit toggle); "
                                                      "also chosen by an .html output")] = False,
    threshold: Annotated[float, typer.Option("--threshold", help="hide lines with |w| <= threshold x the layer's "
                                                                 "largest |w| (0..1)")] = 0.05,
    absolute: Annotated[bool, typer.Option("--absolute", help="the threshold is in weight units, not relative "
                                                              "to each layer's largest |w|")] = False,
    color_by_score: Annotated[bool, typer.Option("--color-by-score", help="colour circuit edges by their score "
                                                                          "instead of the weight's sign")] = False,
    title: Annotated[Optional[str], typer.Option("--title", help="figure title (default: task, regime, seed)")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="print what was written as JSON")] = False,
    allow_other_model: Annotated[bool, typer.Option("--allow-other-model",
                                                    help="overlay a circuit found on another model with the same "
                                                         "widths (deliberate transfer); refused by default")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing output, only one "
                                                                "modcircuit wrote")] = False,
):
    """Draw a trained network (BIMT style), optionally with a discovered circuit highlighted."""
    from ..train import load
    from .save import output_format, save_figure
    from .scene import build_scene, check_threshold

    interactive_view = html or Path(out).suffix.lower() == ".html"
    fmt = output_format(out, interactive=html)  # bad extension: fail before any work
    from ..outputs import check_output

    check_output(out, "figure", overwrite=overwrite)
    check_threshold(threshold, relative=not absolute)
    loaded = load(run)
    circ = load_circuit_file(circuit, loaded.model, allow_other_model) if circuit is not None else None
    from .transformer import is_transformer

    if is_transformer(loaded.model):
        if interactive_view:
            raise ModcircuitError(f"the interactive view draws MLPs; {str(run)!r} is a transformer: "
                                  "write .png, .svg or .pdf")
        from .network import draw

        written = save_figure(draw(loaded, circ, color_by_score=color_by_score, title=title,
                                   allow_other_model=allow_other_model), out,
                              overwrite=overwrite)
        result = {"out": str(written), "format": fmt, "interactive": False, "graph": "transformer",
                  "circuit_edges": circ.n_kept if circ is not None else None}
        extra = f", circuit {circ.n_kept} of {circ.n_edges} edges" if circ is not None else ""
        typer.echo(dumps(result) if json_output else f"head-level drawing of {run}{extra} -> {written}")
        return
    if interactive_view:
        from .interactive import interactive

        fig = interactive(loaded, circ, threshold=threshold, relative=not absolute, title=title,
                          allow_other_model=allow_other_model)
    else:
        from .network import draw

        fig = draw(loaded, circ, threshold=threshold, relative=not absolute, color_by_score=color_by_score,
                   title=title, allow_other_model=allow_other_model)
    written = save_figure(fig, out, overwrite=overwrite)
    scene = build_scene(loaded.model, circ, threshold=threshold, relative=not absolute, task=None)
    result = {"out": str(written), "format": fmt, "interactive": interactive_view,
              "edges_drawn": scene.n_drawn(), "weights": scene.n_weights,
              "circuit_edges": int(sum(int(e.kept.sum()) for e in scene.edges)) if circ is not None else None}
    if json_output:
        typer.echo(dumps(result))
    else:
        what = "interactive view" if interactive_view else "drawing"
        extra = f", circuit {result['circuit_edges']} edges" if circ is not None else ""
        typer.echo(f"{what} of {run}: {result['edges_drawn']} of {result['weights']} weights drawn{extra} -> {written}")
