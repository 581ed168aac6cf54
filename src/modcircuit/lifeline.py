"""Child processes that end when their parent dies, even by SIGKILL (which runs no cleanup in the parent).

Two mechanisms, because a child cannot protect itself before its own code runs:
- `die_with_parent(parent_pid)`, called by the child first thing (pool workers in their initializer,
  the profiler's fresh training process at start): on Linux the kernel sends it SIGKILL when its parent
  goes (prctl PR_SET_PDEATHSIG); everywhere a daemon thread also checks once a second whether the parent
  is still the parent (an orphan is re-parented, so its parent PID changes) and exits if not.
  PR_SET_PDEATHSIG fires when the parent THREAD that started the child ends; the study starts its
  workers from the thread that runs the study, which outlives them.
- `Reaper`: a tiny watcher process (this file run as a script: no torch, starts in milliseconds) that
  the parent tells the PIDs of its workers over a pipe (or asks to watch every new process below it:
  a local Ray cluster's, whose agents outlive a killed driver). When the pipe closes without "done" (the parent
  died, or gave up on its workers), it SIGKILLs them. This covers a worker still importing (a spawned
  worker imports the parent's main module before its initializer runs: seconds, a minute on a loaded
  machine). Each PID is killed only if its start time is still the one registered, so a recycled PID is
  never hit.
"""
from __future__ import annotations

import ctypes
import os
import select
import signal
import subprocess
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
PARENT_ENV = "MODCIRCUIT_PARENT_PID"  # how a subprocess learns which parent to watch
CHECK_EVERY_S = 1.0


def die_with_parent(parent_pid: int | None = None) -> None:
    """End this process when `parent_pid` (default: the current parent) dies."""
    parent_pid = int(parent_pid) if parent_pid else os.getppid()
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no prctl here: the watchdog thread below still works
    if os.getppid() != parent_pid:  # the parent died before the request above took effect
        os._exit(1)
    threading.Thread(target=_watch, args=(parent_pid,), name="modcircuit-parent-watch", daemon=True).start()


def _watch(parent_pid: int) -> None:
    while True:
        time.sleep(CHECK_EVERY_S)
        if os.getppid() != parent_pid:
            os._exit(1)


def child_env(env: dict | None = None) -> dict:
    """`env` (default os.environ) plus this process's PID, for a subprocess that calls `die_with_parent_env`."""
    return dict(os.environ if env is None else env, **{PARENT_ENV: str(os.getpid())})


def die_with_parent_env() -> None:
    """`die_with_parent` for the parent named in the environment by `child_env` (nothing if none is)."""
    pid = os.environ.get(PARENT_ENV)
    if pid and pid.isdigit():
        die_with_parent(int(pid))


# ---- the reaper ------------------------------------------------------------------------------------
def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), "-" where /proc is missing or it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "-"


def descendants(root: int) -> list[int]:
    """PIDs of every process below `root` (Linux /proc; empty where there is none)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(name))
    found, todo = [], [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            found.append(pid)
            todo.append(pid)
    return found


class Reaper:
    """SIGKILLs the watched processes when this process dies (or `abandon()`s them); `release()` when done.

    tree=True: also watch every process that appears below this one from now on (the reaper itself scans
    /proc every SCAN_EVERY_S, so a process started just before the parent died is still caught), except
    the `ignore`d ones (those that were there before)."""

    def __init__(self, *, tree: bool = False, ignore=()):
        self.proc = subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__)], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
        self.seen = {self.proc.pid, *ignore}
        for pid in ignore:
            self._send(f"ignore {pid}")
        if tree:
            self._send("tree")

    def _send(self, line: str) -> None:
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (OSError, ValueError):  # the reaper is gone (e.g. killed by hand): the lifeline still works
            pass

    def watch(self, pid: int) -> None:
        self.seen.add(pid)
        self._send(f"watch {pid} {_start_time(pid)}")

    def watch_new_descendants(self) -> None:
        """Watch the processes below this one that appeared since (the parent's side of tree=True)."""
        for pid in descendants(os.getpid()):
            if pid not in self.seen:
                self.watch(pid)

    def _close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def release(self) -> None:
        """The watched processes finished normally: let them be."""
        self._send("done")
        self._close()

    def abandon(self) -> None:
        """Kill the watched processes now (the study stopped early)."""
        self._close()


SCAN_EVERY_S = 0.25


def _reap() -> None:
    """The reaper process: read commands until "done" (exit) or end of input (kill what is watched)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the terminal: stay to clean up
    parent = os.getppid()
    watched: dict[int, str] = {}  # pid -> start time
    ignore, tree, pending = {os.getpid()}, False, b""
    while True:
        if tree:
            for pid in descendants(parent):
                if pid not in ignore and pid not in watched:
                    watched[pid] = _start_time(pid)
        if not select.select([0], [], [], SCAN_EVERY_S if tree else None)[0]:
            continue
        chunk = os.read(0, 65536)
        if not chunk:
            break  # the parent died, or gave up on its children
        *lines, pending = (pending + chunk).split(b"\n")
        for words in (line.decode().split() for line in lines):
            if words == ["done"]:
                return
            if words == ["tree"]:
                tree = True
            elif words[:1] == ["ignore"]:
                ignore.add(int(words[1]))
            elif words[:1] == ["watch"]:
                watched[int(words[1])] = words[2]
    for pid, start in watched.items():
        if _start_time(pid) == start:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


if __name__ == "__main__":
    _reap()
