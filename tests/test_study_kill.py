"""A study killed with SIGKILL takes its worker processes (and the pool's resource tracker) with it."""
import os
import signal
import subprocess
import sys
import time

import pytest

psutil = pytest.importorskip("psutil")

SPEC = """
name = "kill"
tasks = ["two-moons"]
regimes = ["vanilla"]
seeds = [0, 1, 2, 3]
methods = ["magnitude"]
results = "{results}"
[train]
steps = 1000000
[profile]
enabled = false
"""


def _alive(procs):
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def _is_worker(cmdline: str, executor: str) -> bool:
    if executor == "local":  # spawned pool workers, not the resource tracker
        return "multiprocessing" in cmdline and "resource_tracker" not in cmdline
    return cmdline.startswith("ray::") and "Agent" not in cmdline  # Ray task workers


def _workers(parent, executor="local"):
    try:
        kids = parent.children(recursive=True)
    except psutil.NoSuchProcess:
        return [], []
    workers = []
    for k in kids:
        try:
            if _is_worker(" ".join(k.cmdline()), executor):
                workers.append(k)
        except psutil.NoSuchProcess:
            pass
    return kids, workers


# slow: local ~15-40 s (the CLI and two spawned workers import torch before the kill); ray ~1-2 min
@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "ray"])
def test_sigkill_of_a_study_ends_every_worker(tmp_path, executor):
    if executor == "ray":
        pytest.importorskip("ray")
    spec = tmp_path / "kill.toml"
    spec.write_text(SPEC.format(results=tmp_path / "r.duckdb"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-m", "modcircuit.cli", "study", "run", str(spec), "--workers", "2",
                             "--executor", executor, "--no-progress"], stdout=subprocess.DEVNULL,
                            stderr=(tmp_path / "stderr").open("w"), env=env, start_new_session=True)
    parent = psutil.Process(proc.pid)
    kids = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            kids, workers = _workers(parent, executor)
            # both workers up and past their start-up (importing torch), i.e. training
            if len(workers) >= 2 and all(w.cpu_times().user > 1.5 for w in workers):
                break
            time.sleep(0.5)
        assert proc.poll() is None, (tmp_path / "stderr").read_text()[-2000:]
        kids, workers = _workers(parent, executor)
        assert len(workers) >= 2, [k.cmdline() for k in kids]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while _alive(kids) and time.monotonic() < deadline:
            time.sleep(0.2)
        survivors = _alive(kids)
        assert survivors == [], f"{len(survivors)} of {len(kids)} children alive 10 s after the kill: " + \
            "; ".join(" ".join(p.cmdline())[:120] for p in survivors)
    finally:
        for p in _alive(kids):  # only processes this test started
            p.kill()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---- the two mechanisms alone, with light processes (no torch): fast -----------------------------------
LIFELINE = os.path.join(os.path.dirname(__file__), "..", "src", "modcircuit", "lifeline.py")
LOAD = ("import importlib.util, sys, time, subprocess\n"
        f"spec = importlib.util.spec_from_file_location('lifeline', {os.path.abspath(LIFELINE)!r})\n"
        "lifeline = importlib.util.module_from_spec(spec); spec.loader.exec_module(lifeline)\n")
SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def _run_parent(body: str):
    """A parent process running body; it prints the child's PID and then sleeps until killed."""
    proc = subprocess.Popen([sys.executable, "-c", LOAD + body + "\nprint(child.pid, flush=True)\ntime.sleep(600)\n"],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    return proc, psutil.Process(int(proc.stdout.readline()))


def _gone_within(p, seconds=10.0) -> bool:
    deadline = time.monotonic() + seconds
    while _alive([p]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _alive([p])


@pytest.mark.parametrize("mechanism", ["lifeline", "reaper", "reaper released"])
def test_a_killed_parent_takes_its_child_along(mechanism):
    if mechanism == "lifeline":  # the child protects itself
        body = ("child = subprocess.Popen([sys.executable, '-c', "
                f"{LOAD!r} + 'lifeline.die_with_parent({{}}); time.sleep(600)'.format(__import__('os').getpid())])")
    else:  # the parent registers a plain child with its reaper
        body = (f"child = subprocess.Popen({SLEEPER!r}); reaper = lifeline.Reaper(); reaper.watch(child.pid)"
                + ("; reaper.release()" if mechanism == "reaper released" else ""))
    proc, child = _run_parent(body)
    try:
        time.sleep(1.0)  # the lifeline child has set itself up
        assert _alive([child])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if mechanism == "reaper released":  # released: the child is left alone
            time.sleep(1.0)
            assert _alive([child])
        else:
            assert _gone_within(child), f"{mechanism}: child {child.pid} alive 10 s after its parent's SIGKILL"
    finally:
        if _alive([child]):
            child.kill()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_tree_reaper_kills_processes_started_after_it_and_spares_older_ones():
    body = (f"old = subprocess.Popen({SLEEPER!r}); reaper = lifeline.Reaper(tree=True, ignore=[old.pid]); "
            f"child = subprocess.Popen({SLEEPER!r}); print(old.pid, flush=True); time.sleep(1.0)")
    proc = subprocess.Popen([sys.executable, "-c", LOAD + body + "\nprint(child.pid, flush=True)\ntime.sleep(600)\n"],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    old = psutil.Process(int(proc.stdout.readline()))
    child = psutil.Process(int(proc.stdout.readline()))
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert _gone_within(child), "a process started after the tree reaper outlived the parent by 10 s"
        assert _alive([old]), "the reaper killed a process it was told to ignore"
    finally:
        for p in _alive([old, child]):
            p.kill()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
