"""Output targets: every file or folder modcircuit writes goes through `check_output` (early, before any
training or discovery) and `prepare_output` (right before writing), so an output never destroys what
the tool did not write.

The rules, the same for every writer (train, discover, draw, report, study, animations):
- `.`, the current folder, any folder above it, $HOME and `/` are never an output.
- A target that exists is refused unless overwrite is asked for (`--overwrite`, `overwrite=True`).
- Even then only an output this tool wrote is replaced, recognised by its kind's own mark:
    checkpoint  a folder holding only model.json (format "modcircuit-checkpoint") and model.safetensors
    report      a folder with `.modcircuit-report.json` listing every file in it (a file added by hand
                makes it the user's folder again)
    circuit     a JSON file with format "modcircuit-circuit"
    figure      a .png/.svg/.pdf/.html/.gif/.mp4 whose bytes carry FIGURE_MARK (written into the
                file's own metadata: PNG Software, SVG/PDF Creator, HTML generator, GIF/MP4 comment)
  An empty folder holds nothing to lose and is written over like an absent one.
- The location must be writable: the nearest existing folder above the target is probed by creating
  and removing one temporary file, which also catches read-only mounts and root-only checks.
- Before writing, temporaries of killed writers of THAT target (`.NAME.tmp-PID-*`, `.NAME.old-PID-*`,
  see atomic.py) are removed when their PID is no longer alive; a live writer's temporary is kept.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import ModcircuitError

FIGURE_MARK = "modcircuit-figure"
REPORT_MARKER = ".modcircuit-report.json"
REPORT_FORMAT = "modcircuit-report"
CHECKPOINT_FILES = ("model.json", "model.safetensors")
LEGACY_PARTIAL_AGE_S = 3600  # temporaries named before PIDs were in the name: removed once this old
_MAX_SNIFF_BYTES = 1 << 30


@dataclass(frozen=True)
class Kind:
    """A kind of output: a file or a folder, and how to tell one this tool wrote (None: ours; else why not)."""

    label: str
    folder: bool
    not_ours: Callable[[Path], str | None]


def _checkpoint_not_ours(path: Path) -> str | None:
    from .train.checkpoint import FORMAT

    foreign = sorted(p.name for p in path.iterdir() if p.name not in CHECKPOINT_FILES)
    if foreign:
        return f"it holds {foreign[0]!r}, which modcircuit did not write"
    return _json_format_mismatch(path / "model.json", FORMAT)


def _report_not_ours(path: Path) -> str | None:
    marker = path / REPORT_MARKER
    reason = _json_format_mismatch(marker, REPORT_FORMAT)
    if reason:
        return reason
    listed = set(json.loads(marker.read_text()).get("files", []))
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path).as_posix()
        if (p.is_file() or p.is_symlink()) and rel != REPORT_MARKER and rel not in listed:
            return f"it holds {rel!r}, which modcircuit did not write"
    return None


def _circuit_not_ours(path: Path) -> str | None:
    from .circuits.circuit import FORMAT

    return _json_format_mismatch(path, FORMAT)


def _mib_not_ours(path: Path) -> str | None:
    from .circuits.mib import MIB_FORMAT

    return _json_format_mismatch(path, MIB_FORMAT)


def _figure_not_ours(path: Path) -> str | None:
    if path.stat().st_size > _MAX_SNIFF_BYTES or FIGURE_MARK.encode() not in path.read_bytes():
        return "it carries no modcircuit figure mark"
    return None


def _json_format_mismatch(path: Path, fmt: str) -> str | None:
    if not path.is_file():
        return f"it has no {path.name}"
    try:
        meta = json.loads(path.read_text()) if path.stat().st_size <= _MAX_SNIFF_BYTES else None
    except (ValueError, UnicodeDecodeError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        return f"{path.name} is not {fmt} JSON"
    return None


KINDS = {
    "checkpoint": Kind("checkpoint folder", True, _checkpoint_not_ours),
    "report": Kind("report folder", True, _report_not_ours),
    "circuit": Kind("circuit file", False, _circuit_not_ours),
    "figure": Kind("figure", False, _figure_not_ours),
    "mib": Kind("MIB graph file", False, _mib_not_ours),
}


def _protected(path: Path) -> str | None:
    """Why `path` may never be an output (None if it may)."""
    target = Path(os.path.realpath(path))
    cwd = Path(os.path.realpath(os.getcwd()))
    if target == Path(target.anchor):
        return "the root folder"
    if target == cwd:
        return "the current folder"
    if target in cwd.parents:
        return "a folder above the current folder"
    home = os.path.expanduser("~")
    if home not in ("~", "/") and target == Path(os.path.realpath(home)):
        return "your home folder"
    return None


def check_location(path, *, folder: bool) -> Path:
    """Refuse a location that cannot be written: a file where a folder is needed (or the reverse), or
    no writable folder above it. Creates nothing."""
    path = Path(path)
    want = "folder" if folder else "file"
    if path.exists() and not path.is_symlink() and path.is_dir() != folder:
        have = "folder" if path.is_dir() else "file"
        raise ModcircuitError(f"output {str(path)!r} is a {have}; a {want} is needed there")
    above = Path(os.path.abspath(path)).parent
    while not above.exists():
        above = above.parent
    if not above.is_dir():
        raise ModcircuitError(f"cannot write {str(path)!r}: {str(above)!r} is a file, not a folder")
    try:  # a real probe: os.access is always True for root and ignores read-only mounts
        fd, probe = tempfile.mkstemp(prefix=".modcircuit-probe-", dir=above)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ModcircuitError(f"cannot write {str(path)!r}: folder {str(above)!r} is not writable "
                              f"({e.strerror or type(e).__name__})") from None
    return path


def check_output(path, kind: str, *, overwrite: bool = False) -> Path:
    """Refuse `path` as a `kind` output unless writing it can lose nothing the user made (see module doc).
    Call it before any long work; it creates nothing."""
    k = KINDS[kind]
    path = Path(path)
    where = _protected(path)
    if where:
        raise ModcircuitError(f"output {str(path)!r} is {where}, which is never replaced; "
                              f"name a new {k.label}, e.g. {str(Path(path, 'out'))!r}")
    if path.is_symlink():
        raise ModcircuitError(f"output {str(path)!r} is a symbolic link; modcircuit does not replace links")
    check_location(path, folder=k.folder)
    if not path.exists() or (k.folder and not any(path.iterdir())):
        return path
    if not overwrite:
        raise ModcircuitError(f"output {str(path)!r} already exists; pass --overwrite (overwrite=True in "
                              f"Python) to replace it, which replaces only a {k.label} modcircuit wrote")
    reason = k.not_ours(path)
    if reason:
        raise ModcircuitError(f"output {str(path)!r} is not a {k.label} written by modcircuit ({reason}); "
                              f"it is never replaced, even with --overwrite; choose another name")
    return path


def prepare_output(path, kind: str, *, overwrite: bool = False) -> Path:
    """check_output, then sweep the temporaries killed writers left next to the target: call right before
    writing."""
    path = check_output(path, kind, overwrite=overwrite)
    sweep_partials(path)
    return path


# ---- leftovers of killed writers --------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except (OverflowError, OSError):
        return False
    return True


def sweep_partials(target) -> list[Path]:
    """Remove `.NAME.tmp-PID-*` / `.NAME.old-PID-*` siblings of `target` whose writer PID is dead (and
    ones without a PID once older than LEGACY_PARTIAL_AGE_S); returns what was removed."""
    target = Path(target)
    parent = target.parent
    if not parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(?:tmp|old)-(?:(\d+)(?:-.*)?|(.*))$", re.S)
    removed = []
    for p in parent.iterdir():
        m = pattern.match(p.name)
        if not m:
            continue
        if m.group(1) is not None:
            if _pid_alive(int(m.group(1))):
                continue
        else:
            try:
                if time.time() - p.lstat().st_mtime < LEGACY_PARTIAL_AGE_S:
                    continue
            except OSError:
                continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


# ---- marks -----------------------------------------------------------------------------------------
def write_report_marker(folder: Path) -> None:
    """List every file of a finished report folder in its marker, so --overwrite can recognise it."""
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    (folder / REPORT_MARKER).write_text(json.dumps({"format": REPORT_FORMAT, "version": 1, "files": files},
                                                   indent=1))
