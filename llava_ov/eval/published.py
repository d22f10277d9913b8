"""This build's lmms-eval scores beside the published table, with differences beyond a tolerance flagged.

The table is data (``published/llava_onevision_1_5.yaml``, with its source): each benchmark names the lmms-eval
task and result key this build reports, the scale to percent, and the published score per model. Users judge a
reproduction by this comparison, so a difference larger than ``report.published.tolerance`` points is flagged
rather than left to be spotted.
"""

from __future__ import annotations

from pathlib import Path

import yaml

TABLE = Path(__file__).with_name("published") / "llava_onevision_1_5.yaml"


def load_table(path: Path | str = TABLE) -> dict:
    """The published table: ``source``, ``models`` (key → label), ``benchmarks`` (name, task, metric, scale,
    scores, optional note)."""
    table = yaml.safe_load(Path(path).read_text())
    for bench in table["benchmarks"]:
        unknown = set(bench["scores"]) - set(table["models"])
        if unknown:
            raise ValueError(f"{path}: benchmark {bench['name']} scores unknown models {sorted(unknown)}")
    return table


def compare(table: dict, lmms: dict[str, dict], model: str, tolerance: float) -> list[dict]:
    """One row per published benchmark: this build's score in percent (None if the task was not run), the
    difference to ``model``'s published score and whether it is within ``tolerance`` (None without a model)."""
    if model and model not in table["models"]:
        raise ValueError(f"report.published.model is {model!r}; the table has {sorted(table['models'])}")
    rows = []
    for bench in table["benchmarks"]:
        result = lmms.get(bench["task"], {})
        raw = result.get(bench["metric"])
        value = None if raw is None else round(raw * bench["scale"], 2)
        published = bench["scores"].get(model) if model else None
        delta = None if value is None or published is None else round(value - published, 2)
        rows.append({"name": bench["name"], "task": bench["task"], "metric": bench["metric"], "value": value,
                     "failed": result.get("failed", 0), "scores": bench["scores"], "note": bench.get("note", ""),
                     "published": published, "delta": delta,
                     "within_tolerance": None if delta is None else abs(delta) <= tolerance})
    return rows


def comparison_table(rows: list[dict], table: dict, model: str, stage: str, tolerance: float) -> list[list[str]]:
    """Markdown-ready rows: benchmark, task, this build, every published column, and (with a model) Δ and check."""
    models = list(table["models"])
    head = ["benchmark", "lmms-eval task", f"this build ({stage})", *(table["models"][m] for m in models)]
    if model:
        head += [f"Δ vs {table['models'][model]}", f"within ±{tolerance:g}"]
    out = [head]
    for r in rows:
        mine = "not run" if r["value"] is None else f"{r['value']:.1f}"
        if r["failed"]:
            mine += f" ({r['failed']} items failed)"
        line = [r["name"], f"{r['task']}:{r['metric']}", mine,
                *(f"{r['scores'][m]:.1f}" if m in r["scores"] else "" for m in models)]
        if model:
            line += ["" if r["delta"] is None else f"{r['delta']:+.1f}",
                     "" if r["within_tolerance"] is None else ("yes" if r["within_tolerance"] else "DIFFERS")]
        out.append(line)
    return out
