"""The results store: one DuckDB file (tables runs, circuits, profiles), Parquet export, an artifacts folder.

Only the process that runs the study writes to the store. A finished unit of work commits its
artifacts first (each one written to a temporary name and renamed into place, so a file is either
complete or absent) and then its rows in one transaction, so `kill -9` at any moment leaves no
partial row and no half-written artifact: at worst an artifact without a row, which the next run
recomputes and replaces.

Columns are created on demand from the rows (numbers -> DOUBLE/BIGINT, text -> VARCHAR, lists and
dicts -> JSON text), so every scalar a run, circuit or profile reports is queryable with SQL.

Each `study run` also records the study's manifest: its settings (table `studies`) and the keys of
every cell it plans (table `study_cells`, replaced as a whole on each run). The report shows the
cells of the recorded studies and counts the rest of the file as stale (cells of an earlier
version of a study). Files written before manifests existed have neither table; the report then
shows every cell, grouped by configuration, and says so.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

from ..atomic import replace_dir, staging_dir, write_bytes
from ..errors import ModcircuitError

TABLES = ("runs", "circuits", "profiles")
MANIFEST_TABLES = ("studies", "study_cells")
# columns that measure time or memory: they differ between two runs of the same cell
NONDETERMINISTIC = (
    "created_at", "seconds", "train_seconds", "seconds_per_step", "swap_seconds", "swap_share", "peak_rss_mb",
    "baseline_rss_mb", "train_rss_mb", "cuda_max_allocated_mb", "worker", "wall_seconds",
)


def is_timing_column(name: str) -> bool:
    return (name in NONDETERMINISTIC or "latency" in name or "throughput" in name or name.endswith("_seconds")
            or name.endswith("_mb"))


def _sql_type(v) -> str:
    if isinstance(v, bool):
        return "BOOLEAN"
    if isinstance(v, int):
        return "BIGINT"
    if isinstance(v, float):
        return "DOUBLE"
    return "VARCHAR"


def _sql_value(v):
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, sort_keys=True, default=_json_default)
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else v
    if hasattr(v, "item") and callable(v.item):  # numpy / torch scalar
        return v.item()
    if isinstance(v, Path):
        return str(v)
    return v


def _json_default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot store {type(o).__name__}")


def atomic_write_dir(path: Path, files: dict[str, bytes]) -> None:
    """Write a folder of files under a temporary name and rename it into place (replacing any old one)."""
    tmp = staging_dir(path)
    try:
        for name, data in files.items():
            write_bytes(tmp / name, data)
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def clean_partials(root: Path) -> list[Path]:
    """Remove temporary files/folders left by a killed writer (names `.<name>.tmp-*` / `.old-*`)."""
    removed = []
    if not root.exists():
        return removed
    for p in sorted(root.rglob(".*")):
        if ".tmp-" in p.name or ".old-" in p.name:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _open_error(path: Path, e: Exception) -> ModcircuitError:
    first = str(e).splitlines()[0]
    if "lock" in first.lower():
        return ModcircuitError(f"cannot open results file {str(path)!r}: it is in use by another process "
                               f"(a study run?): {first}")
    return ModcircuitError(f"{str(path)!r} is not a readable DuckDB results file (truncated or not DuckDB?): {first}")


def _readable(fn):
    """Store reads: a damaged file (it can open, then fail on a page) is a one-line error, not a traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(self, *a, **kw):
        import duckdb

        try:
            return fn(self, *a, **kw)
        except duckdb.Error as e:
            raise _open_error(self.path, e) from None

    return wrapper


class Store:
    """A DuckDB results file plus its artifacts folder."""

    def __init__(self, path, artifacts=None, read_only: bool = False):
        import duckdb

        self.path = Path(path)
        self.artifacts = Path(artifacts) if artifacts else self.path.with_name(self.path.stem + "-artifacts")
        self.read_only = read_only
        if read_only and not self.path.is_file():
            raise ModcircuitError(f"results file {str(self.path)!r} does not exist")
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_dir():
            raise ModcircuitError(f"results file {str(self.path)!r} is a folder; give a .duckdb file path")
        try:
            self.con = duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.Error as e:
            raise _open_error(self.path, e) from None
        try:
            if not read_only:
                for t in TABLES:
                    self.con.execute(f'CREATE TABLE IF NOT EXISTS {t} ("key" VARCHAR PRIMARY KEY)')
            for t in self.tables():  # touch every table: a damaged file fails here, before any work
                if t in TABLES:
                    self.con.execute(f'SELECT count(*) FROM {t}').fetchone()
        except duckdb.Error as e:
            self.close()
            raise _open_error(self.path, e) from None

    # ---- schema ---------------------------------------------------------------------------
    @_readable
    def columns(self, table: str) -> list[str]:
        if table not in self.tables():
            return []
        return [r[0] for r in self.con.execute(f"DESCRIBE {table}").fetchall()]

    @_readable
    def tables(self) -> list[str]:
        return [r[0] for r in self.con.execute("SELECT table_name FROM information_schema.tables").fetchall()]

    def _ensure_columns(self, table: str, row: dict) -> None:
        have = set(self.columns(table))
        for k, v in row.items():
            if k not in have and v is not None:
                self.con.execute(f'ALTER TABLE {table} ADD COLUMN "{k}" {_sql_type(_sql_value(v))}')
                have.add(k)
        for k, v in row.items():  # a column first seen as None
            if k not in have:
                self.con.execute(f'ALTER TABLE {table} ADD COLUMN "{k}" VARCHAR')
                have.add(k)

    # ---- reads ----------------------------------------------------------------------------
    @_readable
    def keys(self, table: str) -> set[str]:
        if table not in self.tables():
            return set()
        return {r[0] for r in self.con.execute(f'SELECT "key" FROM {table}').fetchall()}

    @_readable
    def rows(self, table: str, order: str = "key") -> list[dict]:
        if table not in self.tables():
            return []
        cur = self.con.execute(f'SELECT * FROM {table} ORDER BY "{order}"')
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]

    @_readable
    def df(self, table: str):
        if table not in self.tables():
            import pandas as pd

            return pd.DataFrame()
        return self.con.execute(f"SELECT * FROM {table}").df()

    def artifact(self, rel: str) -> Path:
        return self.artifacts / rel

    def read_dir(self, rel: str) -> dict[str, bytes]:
        d = self.artifacts / rel
        return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}

    # ---- writes ---------------------------------------------------------------------------
    def write_artifacts(self, artifacts: dict[str, Any]) -> None:
        """artifacts: relative path -> bytes (a file) or {name: bytes} (a folder), each written atomically."""
        for rel, content in artifacts.items():
            target = self.artifacts / rel
            if isinstance(content, dict):
                atomic_write_dir(target, content)
            else:
                write_bytes(target, content)

    def commit(self, rows: dict[str, list[dict]]) -> None:
        """Insert rows of several tables in one transaction: all of them or none."""
        rows = {t: [{k: _sql_value(v) for k, v in r.items()} for r in rs] for t, rs in rows.items() if rs}
        for t in rows:
            if t not in TABLES:
                raise ValueError(f"unknown table {t}")
        # schema changes (DDL) first, outside the data transaction
        for t, rs in rows.items():
            for r in rs:
                self._ensure_columns(t, r)
        self.con.execute("BEGIN TRANSACTION")
        try:
            for t, rs in rows.items():
                for r in rs:
                    cols = list(r)
                    names = ", ".join(f'"{c}"' for c in cols)
                    marks = ", ".join("?" for _ in cols)
                    self.con.execute(f"INSERT OR REPLACE INTO {t} ({names}) VALUES ({marks})", [r[c] for c in cols])
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise

    # ---- study manifests -------------------------------------------------------------------------
    def record_manifest(self, study: str, settings: dict, cells: dict[str, list[str]]) -> None:
        """Record that `study` (with these settings) consists of exactly these cells, replacing its
        previous manifest, in one transaction."""
        import time

        self.con.execute('CREATE TABLE IF NOT EXISTS studies (name VARCHAR PRIMARY KEY, settings VARCHAR, '
                         'updated_at DOUBLE)')
        self.con.execute('CREATE TABLE IF NOT EXISTS study_cells (study VARCHAR, tbl VARCHAR, "key" VARCHAR)')
        self.con.execute("BEGIN TRANSACTION")
        try:
            self.con.execute("DELETE FROM study_cells WHERE study = ?", [study])
            self.con.execute("INSERT OR REPLACE INTO studies VALUES (?, ?, ?)",
                             [study, json.dumps(settings, sort_keys=True, default=str), time.time()])
            rows = [(study, t, k) for t, keys in cells.items() for k in keys]
            if rows:
                self.con.executemany("INSERT INTO study_cells VALUES (?, ?, ?)", rows)
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise

    @_readable
    def manifest(self) -> dict | None:
        """{"studies": [names], "keys": {table: set of keys}} of every recorded study, or None when the
        file predates manifests."""
        if not set(MANIFEST_TABLES) <= set(self.tables()):
            return None
        names = [r[0] for r in self.con.execute("SELECT name FROM studies ORDER BY name").fetchall()]
        keys: dict[str, set] = {t: set() for t in TABLES}
        for t, k in self.con.execute("SELECT tbl, key FROM study_cells").fetchall():
            keys.setdefault(t, set()).add(k)
        return {"studies": names, "keys": keys}

    def export_parquet(self, folder=None) -> Path:
        """COPY each table to <folder>/<table>.parquet (default: <results stem>-parquet/), atomically."""
        folder = Path(folder) if folder else self.path.with_name(self.path.stem + "-parquet")
        folder.mkdir(parents=True, exist_ok=True)
        for t in TABLES:
            if t not in self.tables():
                continue
            final = folder / f"{t}.parquet"
            tmp = folder / f".{t}.parquet.tmp-{os.getpid()}"
            self.con.execute(f"COPY {t} TO '{tmp}' (FORMAT PARQUET)")
            os.replace(tmp, final)
        return folder

    def close(self) -> None:
        try:
            self.con.close()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
