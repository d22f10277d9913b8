"""The shard engine: results in item order on any executor, a failing task stops the map with its own error."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from llava_ov.engine import Engine


def slow_square(x: int) -> int:
    time.sleep(0.05 * (5 - x % 5))  # later items finish first
    return x * x


def fails_on_three(x: int) -> int:
    if x == 3:
        raise FileNotFoundError(f"shard-{x:06d}.tar is missing")
    return x


def test_params_pick_the_executor(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    engine = Engine.from_params({"engine": {"executor": "local", "cpus": 1}})
    assert engine.executor == "local" and engine.cluster_address is None
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert Engine.from_params({"engine": {}}).cluster_address == "10.0.0.1:6379"
    assert Engine(address="head:6379").cluster_address == "head:6379"  # the param wins over the environment
    with pytest.raises(ValueError, match="engine.executor must be one of"):
        Engine(executor="spark")


def test_ray_and_local_give_the_same_results_in_item_order(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    items = list(range(12))
    local = Engine(executor="local").map(slow_square, items, desc="local")
    engine = Engine(executor="ray", cpus=2)
    with engine.session():
        on_ray = engine.map(slow_square, items, desc="ray")
        with pytest.raises(FileNotFoundError, match="shard-000003.tar is missing"):
            engine.map(fails_on_three, items, desc="ray")
    assert on_ray == local == [x * x for x in items]


def test_one_item_runs_in_this_process_unless_a_ray_is_up(monkeypatch):
    """A local Ray for one shard is start-up cost without parallelism; a cluster or a running session is used."""
    import os

    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    engine = Engine(executor="ray", cpus=2)
    assert engine.map(lambda _: os.getpid(), [0], desc="one") == [os.getpid()] and not ray.is_initialized()
    with engine.session():
        assert engine.map(lambda _: os.getpid(), [0], desc="one") != [os.getpid()]  # a worker's pid


def writes_until_killed(job: tuple[str, int]) -> int:
    """Item 1 keeps writing files into a folder; item 0 fails once it has started."""
    folder, i = Path(job[0]), job[1]
    started = folder / "started"
    deadline = time.monotonic() + 60
    if i == 0:
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        raise FileNotFoundError("shard-000000.tar is missing")
    started.touch()
    n = 0
    while time.monotonic() < deadline:
        (folder / f"{n}.part").write_bytes(b"x")
        n += 1
        time.sleep(0.001)
    return n


def test_a_failing_map_returns_only_once_no_task_writes_any_more(tmp_path, monkeypatch):
    """The caller removes the scratch folder the tasks write into as soon as the map raises (ingest's
    ``cache_or_scratch``): a task still running then fails that removal with "Directory not empty"."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    engine = Engine(executor="ray", cpus=2)
    with engine.session():
        with pytest.raises(FileNotFoundError, match="shard-000000.tar is missing"):
            engine.map(writes_until_killed, [(str(tmp_path), 0), (str(tmp_path), 1)], desc="ray")
        written = sorted(p.name for p in tmp_path.iterdir())
        time.sleep(1.0)
        assert sorted(p.name for p in tmp_path.iterdir()) == written and "started" in written
