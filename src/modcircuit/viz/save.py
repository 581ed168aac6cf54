"""Write a figure to a file whose extension picks the format: .png, .svg, .pdf or .html.

Matplotlib figures write any of the four (.html embeds the SVG in a page); plotly figures
(the interactive view) write .html only, as one self-contained file. The file is written to a
temporary sibling and renamed into place, so a failure never leaves half a file behind. Every figure
carries outputs.FIGURE_MARK in its own metadata, so `--overwrite` can tell it from a user's file.
"""
from __future__ import annotations

import io
from pathlib import Path

from ..atomic import write_bytes
from ..errors import ModcircuitError
from ..outputs import FIGURE_MARK, prepare_output

FORMATS = (".png", ".svg", ".pdf", ".html")


def output_format(path, interactive: bool = False) -> str:
    """The format (extension without the dot) for `path`, or a one-line error naming the allowed ones."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ModcircuitError(
            f"unknown output format {suffix or '(none)'!r} for {str(path)!r}; allowed: {', '.join(FORMATS)}"
        )
    if interactive and suffix != ".html":
        raise ModcircuitError(f"the interactive view is written as .html, not {suffix!r} ({str(path)!r})")
    return suffix[1:]


def _is_plotly(fig) -> bool:
    return type(fig).__module__.startswith("plotly")


_GENERATOR = f'<meta name="generator" content="{FIGURE_MARK}">'
_METADATA = {"png": {"Software": FIGURE_MARK}, "svg": {"Creator": FIGURE_MARK}, "pdf": {"Creator": FIGURE_MARK}}


def render(fig, fmt: str, dpi: int = 150) -> bytes:
    if _is_plotly(fig):
        if fmt != "html":
            raise ModcircuitError(f"an interactive (plotly) figure is written as .html, not .{fmt}")
        page = fig.to_html(include_plotlyjs=True, full_html=True, config={"scrollZoom": True, "displaylogo": False})
        return page.replace("<head>", "<head>" + _GENERATOR, 1).encode()
    if fmt == "html":
        buf = io.StringIO()
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata=_METADATA["svg"])
        svg = buf.getvalue()
        svg = svg[svg.index("<svg"):]  # drop the XML prolog and doctype: inline SVG in HTML
        title = fig.axes[0].get_title() if fig.axes else ""
        return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">{_GENERATOR}"
                f"<title>{title or 'modcircuit'}</title>"
                f"</head><body>\n{svg}\n</body></html>\n").encode()
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight", metadata=_METADATA[fmt])
    return buf.getvalue()


def save_figure(fig, path, dpi: int = 150, *, overwrite: bool = False) -> Path:
    """Write `fig` (matplotlib or plotly) to `path`; the extension picks the format. An existing file is
    replaced only with overwrite=True and only if it is a figure modcircuit wrote (see modcircuit.outputs)."""
    fmt = output_format(path, interactive=_is_plotly(fig))
    data = render(fig, fmt, dpi)
    return write_bytes(prepare_output(path, "figure", overwrite=overwrite), data)
