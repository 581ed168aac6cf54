"""Executors run units of work and hand back results in completion order; only the caller writes the store.

- local, workers=1: one after another in this process.
- local, workers>1: a process pool (spawned processes, one torch thread each) whose workers end when
  this process dies, even by SIGKILL (modcircuit.lifeline); the pool's resource tracker then ends too.
- ray: each unit is a Ray task (num_cpus=1) on a local cluster started here (its processes, too, end
  with a killed study), or on an existing cluster (`address`, e.g. "auto" or "ray://head:10001";
  modcircuit must be installed on its nodes).
"""
from __future__ import annotations

import os
from typing import Callable, Iterator

from ..errors import ModcircuitError, choice_error

EXECUTORS = ("local", "ray")
Outcome = tuple  # (unit, result | None, error message | None)


class LocalExecutor:
    name = "local"

    def __init__(self, workers: int = 1):
        if workers < 1:
            raise ModcircuitError(f"workers {workers!r} must be >= 1")
        self.workers = workers

    def run(self, fn: Callable, units: list) -> Iterator[Outcome]:
        if self.workers == 1 or len(units) <= 1:
            for u in units:
                try:
                    yield u, fn(u), None
                except ModcircuitError as e:
                    yield u, None, str(e)
            return
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        from ..lifeline import Reaper

        ctx = mp.get_context("spawn")
        pool = ProcessPoolExecutor(max_workers=min(self.workers, len(units)), mp_context=ctx,
                                   initializer=_worker_init, initargs=(os.getpid(),))
        reaper, finished = Reaper(), False
        try:
            futures = {pool.submit(fn, u): u for u in units}
            for pid in list(getattr(pool, "_processes", None) or {}):  # spawned by submit(); keyed by PID
                reaper.watch(pid)
            for fut in as_completed(futures):
                u = futures[fut]
                try:
                    yield u, fut.result(), None
                except ModcircuitError as e:
                    yield u, None, str(e)
            finished = True
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            reaper.release() if finished else reaper.abandon()  # stopped early: end the workers too


def _worker_init(parent_pid: int):
    from ..lifeline import die_with_parent

    die_with_parent(parent_pid)
    import torch

    torch.set_num_threads(1)


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None):
        self.address = address
        self.workers = workers

    def _init(self):
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        try:
            import ray
        except ImportError:
            raise ModcircuitError(
                "the ray executor needs Ray: pip install 'modcircuit[ray]' (or pip install 'ray[default]')"
            ) from None
        started = False
        if not ray.is_initialized():
            env = {"env_vars": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}}
            try:
                if self.address:
                    ray.init(address=self.address, runtime_env=env, log_to_driver=False)
                else:
                    ray.init(num_cpus=self.workers or 2, include_dashboard=False, runtime_env=env,
                             log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                where = self.address or "a local cluster"
                raise ModcircuitError(f"cannot start or reach Ray at {where}: {str(e).splitlines()[0]}") from None
            started = True
        return ray, started

    def run(self, fn: Callable, units: list) -> Iterator[Outcome]:
        from ..lifeline import Reaper, descendants

        before = descendants(os.getpid())
        ray, started = self._init()
        remote = ray.remote(num_cpus=1, max_retries=1)(_ray_call)
        # Ray ends its head and workers with a killed driver, but not its agents: every process of a
        # local cluster started here is watched by a reaper (modcircuit.lifeline)
        reaper, finished = (Reaper(tree=True, ignore=before) if started else None), False
        try:
            pending = {remote.remote(fn, u): u for u in units}
            while pending:
                if reaper is not None:  # the reaper scans too; this covers a reaper still starting up
                    reaper.watch_new_descendants()
                done, _ = ray.wait(list(pending), num_returns=1, timeout=2.0)
                for ref in done:
                    u = pending.pop(ref)
                    try:
                        status, payload = ray.get(ref)
                    except Exception as e:  # a worker died or the task failed inside Ray
                        yield u, None, f"ray task failed: {str(e).splitlines()[0]}"
                        continue
                    yield (u, payload, None) if status == "ok" else (u, None, payload)
            finished = True
        finally:
            if started:
                ray.shutdown()
            if reaper is not None:
                reaper.release() if finished else reaper.abandon()


def _ray_call(fn, unit):
    import torch

    torch.set_num_threads(1)
    try:
        return "ok", fn(unit)
    except ModcircuitError as e:
        return "error", str(e)


def make_executor(name: str, workers: int = 1, address: str | None = None):
    if name not in EXECUTORS:
        raise choice_error("executor", name, EXECUTORS)
    if name == "local":
        if address:
            raise ModcircuitError("--address is for the ray executor; use --executor ray")
        return LocalExecutor(workers)
    return RayExecutor(address, workers if workers > 1 else None)
