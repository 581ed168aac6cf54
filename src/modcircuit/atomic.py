"""Atomic writes: a file or folder appears whole or not at all, so a killed process never leaves a
half-written checkpoint, circuit, figure or report behind. Partial names are `.<name>.tmp-<pid>-*` (and
`.<name>.old-<pid>-*` while a folder is replaced): the writer's PID lets the next writer of the same
target remove a killed writer's leftovers without touching a live one's (outputs.sweep_partials)."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def ordinary_permissions(path: str | Path) -> None:
    """What a plain open()/mkdir would have given `path` under the umask (0644 / 0755 under 022):
    mkstemp and mkdtemp make private 0600 / 0700 entries, and so does safetensors."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~umask)


def publish(tmp: str | Path, path: Path) -> None:
    """Give a finished temporary file ordinary permissions and rename it into place."""
    ordinary_permissions(tmp)
    os.replace(tmp, path)


def partial_prefix(path, what: str = "tmp") -> str:
    """The name prefix of a temporary (`what`="tmp") or set-aside ("old") sibling of `path`."""
    return f".{Path(path).name}.{what}-{os.getpid()}-"


def write_bytes(path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=partial_prefix(path), dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path, text: str) -> Path:
    return write_bytes(path, text.encode())


def staging_dir(final) -> Path:
    """An empty temporary sibling of `final` to build a folder in; `replace_dir` moves it into place."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=partial_prefix(final), dir=final.parent))
    ordinary_permissions(tmp)
    return tmp


def replace_dir(tmp: Path, final) -> None:
    """Rename the finished folder `tmp` to `final`, replacing an old one (never a mix of old and new)."""
    final = Path(final)
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=partial_prefix(final, "old"), dir=final.parent))
        os.replace(final, old / "x")
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
