"""benchmarks/bench_generate.py runs (at the tiny shape, on CPU); the 4B measurement needs a GPU."""

from __future__ import annotations

import runpy

from tests.project import REPO


def test_generation_benchmark_runs_at_a_tiny_shape(capsys):
    main = runpy.run_path(str(REPO / "benchmarks" / "bench_generate.py"), run_name="bench_generate")["main"]
    rows = main(["--tiny", "--items", "4", "--batches", "1", "4", "--new-tokens", "2"])
    assert [r["batch"] for r in rows] == [1, 4] and all(r["items_per_s"] > 0 for r in rows)
    out = capsys.readouterr().out
    assert "tiny-shaped model" in out and "| batch | seconds | items/s | new tokens/s | vs batch 1 |" in out
