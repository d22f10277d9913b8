"""Stateful shard workers on the engine: one per GPU (or per CPU slot where the cluster has no GPU).

:meth:`llava_ov.engine.Engine.map` starts a fresh task per shard, right for work whose start-up is cheap. A
concept-index worker's start-up is not: it loads the encoder (MetaCLIP-H/14 is ~1B parameters, 2-4 GB) and the
concept matrix (500K x 1024 fp16 = 1 GB) onto its device, several seconds that a task per shard would pay again for
every ~10K-image shard (``benchmarks/bench_concepts.py`` measures both). Here each worker is built once per slot and
then fed shards as it finishes them; results still come back in item order, whatever order they finish in, and a
failing item raises its own error. ``executor: local`` builds one worker in this process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

from tqdm import tqdm

from llava_ov.engine import Engine

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Slot:
    """What one worker may use: CPU threads and whether it owns a GPU."""

    cpus: int
    gpu: bool


def _local_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def plan_slots(resources: dict[str, float], items: int) -> tuple[int, Slot]:
    """(number of workers, each one's slot) for a cluster's resources: one worker per GPU with the CPUs shared among
    them, else one per CPU, but never more workers than items, so a single shard still gets every CPU."""
    cpus, gpus = int(resources.get("CPU", 1)), int(resources.get("GPU", 0))
    workers = max(1, min(items, gpus or cpus))
    return workers, Slot(cpus=max(1, cpus // workers), gpu=gpus > 0)


def map_on_workers(engine: Engine, make: Callable[[Slot], Any], method: str, items: Sequence[T], *,
                   desc: str) -> list[R]:
    """``[make(slot).<method>(item) for item in items]`` with one ``make(slot)`` per worker, results in item order.

    ``make`` must be a picklable callable (a class or a module-level function) that builds a worker for a slot.
    """
    if not items:
        return []
    if engine.executor == "local":
        worker = make(Slot(cpus=engine.cpus, gpu=_local_gpu()))
        return [getattr(worker, method)(item) for item in tqdm(items, desc=desc, unit="shard", mininterval=1.0)]
    with engine.session():
        return _ray_workers(make, method, items, desc)


def _ray_workers(make: Callable[[Slot], Any], method: str, items: Sequence[T], desc: str) -> list[R]:
    import ray
    from ray.exceptions import RayTaskError

    n, slot = plan_slots(ray.cluster_resources(), len(items))
    actor = ray.remote(num_cpus=slot.cpus, num_gpus=1 if slot.gpu else 0, max_restarts=0)(_Worker)
    workers = [actor.remote(make, slot) for _ in range(n)]
    results: list[Any] = [None] * len(items)
    pending: dict[Any, tuple[int, Any]] = {}
    free, nxt = list(workers), 0
    try:
        with tqdm(total=len(items), desc=desc, unit="shard", mininterval=1.0) as bar:
            while nxt < len(items) or pending:
                while free and nxt < len(items):
                    w = free.pop()
                    pending[w.call.remote(method, items[nxt])] = (nxt, w)
                    nxt += 1
                done, _ = ray.wait(list(pending), num_returns=1)
                index, w = pending.pop(done[0])
                try:
                    results[index] = ray.get(done[0])
                except RayTaskError as e:
                    raise e.as_instanceof_cause() from None
                free.append(w)
                bar.update()
    finally:
        for w in workers:
            ray.kill(w)
    return results


class _Worker:
    """The Ray actor around a worker: built once, then called once per item."""

    def __init__(self, make: Callable[[Slot], Any], slot: Slot) -> None:
        self.worker = make(slot)

    def call(self, method: str, item: Any) -> Any:
        return getattr(self.worker, method)(item)
