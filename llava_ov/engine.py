"""Shard-parallel execution: one pure function mapped over a stage's shards, in this process or on Ray.

The data stages (ingest, lengths, pack materialisation, concept_index) are maps over shards followed by a small
global step. :class:`Engine` runs the map. ``executor: ray`` starts a local Ray cluster of ``cpus`` CPUs (no
dashboard, no network), or joins the cluster at ``address`` / ``$RAY_ADDRESS`` unchanged; ``executor: local``
runs every task in this process, the one-process reference. Results come back in the order of the items, whatever
order the tasks finish in, so an artifact built on 1 CPU, on 2, or on a 16-node cluster has the same bytes.

Ray Core tasks, not Ray Data: a local Ray starts in ~5 s on these machines and runs 100 tasks in ~0.5 s, while
Ray Data's executor adds ~12 s of start-up per stage (``reference/environment.md``); a stage's unit of work is
already a shard. At most ``2 x CPUs`` tasks are in flight, so a stage's driver holds a bounded number of results.

The engine's settings decide where work runs, never what it computes, so they are deliberately not declared as
params of any stage in ``dvc.yaml``: changing them reruns nothing (tests assert equal digests across them).
Task functions take absolute paths: a worker on another node does not share the driver's working directory.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")
EXECUTORS = ("ray", "local")
STOP_WAIT_S = 60.0  # a killed worker ends in well under a second; never hang a failing stage on one


@dataclass(frozen=True)
class Engine:
    """Where a stage's shard tasks run (``params.yaml: engine``)."""

    executor: str = "ray"
    cpus: int = 2
    address: str | None = None

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ValueError(f"params.yaml engine.executor must be one of {EXECUTORS}, not {self.executor!r}")
        if self.executor == "ray" and self.cpus < 1 and not self.cluster_address:
            raise ValueError(f"params.yaml engine.cpus must be >= 1 for a local Ray cluster, not {self.cpus}")

    @classmethod
    def from_params(cls, params: dict) -> "Engine":
        cfg = params.get("engine") or {}
        return cls(executor=cfg.get("executor", "ray"), cpus=int(cfg.get("cpus", 2)), address=cfg.get("address"))

    @property
    def cluster_address(self) -> str | None:
        """The Ray cluster to join: ``engine.address``, else ``$RAY_ADDRESS``; None starts a local one."""
        return self.address or os.environ.get("RAY_ADDRESS") or None

    @contextmanager
    def session(self) -> Iterator["Engine"]:
        """Keep Ray up across several maps of one stage (each map otherwise starts and stops it)."""
        if self.executor == "local":
            yield self
            return
        import ray

        if ray.is_initialized():
            yield self
            return
        _start_ray(self)
        try:
            yield self
        finally:
            ray.shutdown()

    def map(self, fn: Callable[[T], R], items: Sequence[T], *, desc: str, cpus_per_task: float = 1,
            gpus_per_task: float = 0) -> list[R]:
        """``[fn(item) for item in items]``, in that order, with a progress bar; a failing task's error is raised.

        One item and no cluster to join runs in this process: starting a local Ray for it costs ~5-10 s (start-up,
        a worker importing the project) and buys no parallelism, which is every pack stage of the default profile.
        """
        if self.executor == "local" or not items or (len(items) == 1 and not self._ray_is_up()):
            return [fn(item) for item in tqdm(items, desc=desc, unit="shard", mininterval=1.0)]
        with self.session():
            return _ray_map(fn, items, desc, cpus_per_task, gpus_per_task)

    def _ray_is_up(self) -> bool:
        """A cluster to join, or a Ray this process already started (a session)."""
        import ray

        return bool(self.cluster_address) or ray.is_initialized()


def _start_ray(engine: Engine) -> None:
    import ray

    address = engine.cluster_address
    project = str(Path(__file__).resolve().parents[1])
    # workers on other nodes import the project from the same (shared) path as the driver
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [project, os.environ.get("PYTHONPATH")]))}}
    common: dict[str, Any] = dict(include_dashboard=False, configure_logging=False, log_to_driver=False,
                                  runtime_env=env)
    if address:
        ray.init(address=address, **common)
    else:  # "local": always a new cluster of our own, never one another process happens to run on this machine
        ray.init(address="local", num_cpus=engine.cpus, **common)


def _ray_map(fn: Callable[[T], R], items: Sequence[T], desc: str, cpus: float, gpus: float) -> list[R]:
    import ray
    from ray.exceptions import RayTaskError

    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(fn)
    limit = max(2, 2 * int(ray.cluster_resources().get("CPU", 1) // max(cpus, 1e-9)))
    results: list[Any] = [None] * len(items)
    pending: dict[Any, int] = {}
    nxt = 0
    with tqdm(total=len(items), desc=desc, unit="shard", mininterval=1.0) as bar:
        try:
            while nxt < len(items) or pending:
                while nxt < len(items) and len(pending) < limit:
                    pending[task.remote(items[nxt])] = nxt
                    nxt += 1
                done, _ = ray.wait(list(pending), num_returns=1)
                index = pending.pop(done[0])
                results[index] = ray.get(done[0])
                bar.update()
        except BaseException as e:  # a task's error, or the driver interrupted
            _stop(list(pending))
            if isinstance(e, RayTaskError):
                raise e.as_instanceof_cause() from None
            raise
    return results


def _stop(refs: list) -> None:
    """Kill the tasks still in flight and wait until they have ended. ``ray.cancel`` only asks; the caller goes on
    to remove the scratch folder those tasks write into, which a task still running would refill under it."""
    import ray

    for ref in refs:
        ray.cancel(ref, force=True)
    if refs:
        ray.wait(refs, num_returns=len(refs), timeout=STOP_WAIT_S)
