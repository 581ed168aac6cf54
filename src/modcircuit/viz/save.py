"""Write a figure to a file whose extension picks the format: .png, .svg, .pdf or .html.

Matplotlib figures write any of the four (.html embeds the SVG in a page); plotly figures
(the interactive view) write .html only, as one self-contained file. The file is written to a
temporary sibling and renamed into place, so a failure never leaves half a file behind.
"""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

from ..errors import ModcircuitError

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


def render(fig, fmt: str, dpi: int = 150) -> bytes:
    if _is_plotly(fig):
        if fmt != "html":
            raise ModcircuitError(f"an interactive (plotly) figure is written as .html, not .{fmt}")
        return fig.to_html(include_plotlyjs=True, full_html=True,
                           config={"scrollZoom": True, "displaylogo": False}).encode()
    if fmt == "html":
        buf = io.StringIO()
        fig.savefig(buf, format="svg", bbox_inches="tight")
        svg = buf.getvalue()
        svg = svg[svg.index("<svg"):]  # drop the XML prolog and doctype: inline SVG in HTML
        title = fig.axes[0].get_title() if fig.axes else ""
        return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title or 'modcircuit'}</title>"
                f"</head><body>\n{svg}\n</body></html>\n").encode()
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish(tmp, path: Path) -> None:
    """Give a finished temporary file ordinary permissions (mkstemp makes it 0600) and rename it into place."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_figure(fig, path, dpi: int = 150) -> Path:
    """Write `fig` (matplotlib or plotly) to `path`; the extension picks the format."""
    fmt = output_format(path, interactive=_is_plotly(fig))
    return write_bytes_atomic(Path(path), render(fig, fmt, dpi))
