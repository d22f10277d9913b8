"""Data-parallel scoring: one model replica per device, each in its own process, answers merged in request order.

At scale the benchmarks run one replica per GPU (DESIGN, "Engines at scale"). :class:`ParallelScorer` offers the
two calls that callers make on a :class:`~llava_ov.eval.scoring.Scorer` (``loglikelihood`` and ``generate``). It
deals the requests round-robin over its replicas (request ``i`` goes to replica ``i mod N``, so each replica gets a
similar mix of lengths), scores its own share in this process while spawned worker processes score theirs, and
puts every answer back at its request's index. Each request is scored whole by one replica, and a greedy answer
does not depend on which other prompts share its batch (tested on CPU), so the merged answers are the same for any
number of replicas, and they come back in document order.

Workers are started with ``spawn`` (a forked CUDA context is unusable) and load the checkpoint themselves; no
model weights cross a process boundary, only prompts (text and image bytes) and answers.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from llava_ov.eval.checkpoint import load_checkpoint
from llava_ov.eval.scoring import Prompt, Score, Scorer

_WORKER: Scorer | None = None  # the replica of a worker process, loaded by its pool's initializer


def replica_devices(device: str, data_parallel: int | str) -> list[str]:
    """One device name per replica: ``data_parallel`` replicas (``auto``: one per visible GPU) on ``cuda:0..N-1``
    when ``device`` is ``cuda``/``auto`` and CUDA is present, else ``data_parallel`` processes on ``device`` (on
    CPU that is how the multi-process path is exercised without a GPU)."""
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' asked for, but torch sees no CUDA device")
    if data_parallel == "auto":
        count = torch.cuda.device_count() if cuda else 1
    else:
        count = int(data_parallel)
        if count < 1:
            raise ValueError(f"data_parallel must be 'auto' or at least 1, got {data_parallel!r}")
    if cuda:
        if count > torch.cuda.device_count():
            raise RuntimeError(f"data_parallel {count} asks for more GPUs than the {torch.cuda.device_count()} "
                               f"visible ones")
        return [f"cuda:{i}" for i in range(count)]
    return ["cpu" if device == "auto" else device] * count


def open_replica(checkpoint: Path | str, device: str, dtype: str = "float32", batch_size: int = 8,
                 max_pixels: int = 0, min_pixels: int = 0, threads: int = 0) -> Scorer:
    """A :class:`Scorer` on ``device``; ``max_pixels``/``min_pixels`` (0: the checkpoint's own) bound the
    evaluation resize, e.g. the published evaluation's 3,240,000. ``threads`` > 0 sets torch's CPU threads."""
    if threads:
        torch.set_num_threads(threads)
    ckpt = load_checkpoint(checkpoint, dtype=getattr(torch, dtype))
    bounds = {k: v for k, v in (("max_pixels", max_pixels), ("min_pixels", min_pixels)) if v}
    if bounds:
        ckpt = dataclasses.replace(ckpt, images=dataclasses.replace(ckpt.images, **bounds))
    ckpt.model.to(device)
    return Scorer(ckpt, batch_size=batch_size, progress=False)


def _load_worker(checkpoint: str, device: str, options: dict) -> None:
    global _WORKER
    _WORKER = open_replica(checkpoint, device, **options)


def _worker_call(method: str, *args):
    return getattr(_WORKER, method)(*args)


class ParallelScorer:
    """Replicas of one checkpoint on ``devices`` (the first in this process, the others in worker processes).

    Use as a context manager, or call :meth:`close`, so the worker processes end."""

    def __init__(self, checkpoint: Path | str, devices: list[str], **options) -> None:
        if len(devices) < 2:
            raise ValueError(f"ParallelScorer needs at least 2 devices, got {devices}; use open_replica for one")
        spawn = multiprocessing.get_context("spawn")
        # The workers start loading while this process loads its own replica.
        self.pools = [ProcessPoolExecutor(1, spawn, initializer=_load_worker,
                                          initargs=(str(checkpoint), device, options)) for device in devices[1:]]
        self.local = open_replica(checkpoint, devices[0], **options)
        self.ckpt = self.local.ckpt

    def _map(self, method: str, requests: list, *args) -> list:
        shares = [requests[r::len(self.pools) + 1] for r in range(len(self.pools) + 1)]
        futures = [pool.submit(_worker_call, method, share, *args) if share else None
                   for pool, share in zip(self.pools, shares[1:])]
        answers = [getattr(self.local, method)(shares[0], *args) if shares[0] else []]
        answers += [future.result() if future else [] for future in futures]
        merged: list = [None] * len(requests)
        for r, share_answers in enumerate(answers):
            merged[r::len(answers)] = share_answers
        return merged

    def loglikelihood(self, items: list[tuple[Prompt, list[str]]], close_turn: bool = True) -> list[list[Score]]:
        return self._map("loglikelihood", items, close_turn)

    def generate(self, prompts: list[Prompt], max_new_tokens: int) -> list[str]:
        return self._map("generate", prompts, max_new_tokens)

    def close(self) -> None:
        for pool in self.pools:
            pool.shutdown(cancel_futures=True)

    def __enter__(self) -> "ParallelScorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_scorer(checkpoint: Path | str, device: str = "cpu", data_parallel: int | str = 1,
                **options) -> Scorer | ParallelScorer:
    """One replica in this process, or a :class:`ParallelScorer` over ``data_parallel`` of them."""
    devices = replica_devices(device, data_parallel)
    if len(devices) == 1:
        return open_replica(checkpoint, devices[0], **options)
    return ParallelScorer(checkpoint, devices, **options)
