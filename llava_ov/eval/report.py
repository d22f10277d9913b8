"""The build report: what each stage bought, as Markdown + HTML with PNG plots (matplotlib, Agg).

Inputs are the small files other stages already write: ``metrics/eval_<stage>.json`` (accuracy per task and
category, blind baseline; lmms-eval benchmarks, put beside the published table of :mod:`llava_ov.eval.published`),
``metrics/balance.json`` (concept coverage), the pack artifacts' pack index (pack fill, ``pack_dirs``: stage ->
folder), DVCLive training logs
(``plots/train_<stage>/plots/metrics/loss.tsv``) and every stage's ``seconds``. A section whose inputs are not
built yet says so instead of failing, so the report can be built at any point of the graph.
Plots carry no timestamps: the same inputs give byte-identical PNGs.
"""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from llava_ov.eval.published import compare, comparison_table, load_table  # noqa: E402

PNG_META = {"Software": None}  # no version string: PNG bytes depend on the data only


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata=PNG_META)
    plt.close(fig)
    return path.name


def eval_table(evals: dict[str, dict]) -> list[list[str]]:
    """Rows: task × (accuracy, mc_accuracy, loss) per stage, with the blind baseline beside accuracy."""
    stages = list(evals)
    tasks = sorted({t for m in evals.values() for t, v in m.items() if isinstance(v, dict) and "samples" in v})
    rows = [["task", "metric", *stages, "blind"]]
    for task in tasks:
        for metric in ("accuracy", "mc_accuracy", "loss"):
            values = [evals[s].get(task, {}).get(metric) for s in stages]
            if all(v is None for v in values):
                continue
            blind = next((evals[s][task].get("blind_accuracy") for s in stages if task in evals[s]), None)
            rows.append([task, metric, *("" if v is None else f"{v:.3f}" for v in values),
                         f"{blind:.3f}" if metric == "accuracy" and blind is not None else ""])
    return rows


LMMS_COUNTS = ("samples", "mc_samples", "failed")


def lmms_table(evals: dict[str, dict]) -> list[list[str]]:
    """Rows: lmms-eval task × metric (loss and likelihood multiple choice first, then the task's own generation
    metrics), one column per stage; a metric a stage did not compute is "—"."""
    stages = list(evals)
    results = {s: evals[s].get("lmms", {}) for s in stages}
    rows = [["task", "metric", *stages]]
    for task in sorted({t for r in results.values() for t in r}):
        names = {k for r in results.values() for k in r.get(task, {}) if k not in LMMS_COUNTS}
        for metric in sorted(names, key=lambda k: (k not in ("loss", "mc_accuracy"), k != "loss", k)):
            values = [results[s].get(task, {}).get(metric) for s in stages]
            rows.append([task, metric, *("—" if v is None else f"{v:.3f}" for v in values)])
        failed = max(results[s].get(task, {}).get("failed", 0) for s in stages)
        if failed:
            rows.append([task, "items whose images do not decode (left out)", *[str(failed)] * len(stages)])
    return rows


def lmms_note(evals: dict[str, dict]) -> str:
    generated = [s for s, m in evals.items() if m.get("lmms_generation")]
    return ("loss = NLL per token of the reference answer; mc_accuracy = multiple choice by log-likelihood (the "
            "task's choices, or the option letters of letter-answer benchmarks); the other metrics are the "
            "benchmark's own, from generated answers (greedy), as lmms-eval scores them. Generation benchmarks run "
            f"only on the checkpoints of eval.lmms.generation_stages ({', '.join(generated) or 'none evaluated'}): "
            "earlier checkpoints are not instruction-tuned (Stage-1 trains the merger on captions, Stage-1.5 on "
            "descriptions), so they do not answer a question with a letter or a word and score about 0; their "
            "loss and likelihood multiple choice show what each stage changed.")


def stage_checks(evals: dict[str, dict], expect: dict[str, dict]) -> list[dict]:
    """Each stage's own metric against the evaluated stage before it: did the stage buy what it is for?

    ``expect`` maps a stage to ``{task, metric, better}`` (``better``: ``lower`` or ``higher``), e.g. Stage-1's
    held-out caption loss falls; generation accuracy only means something from Stage-2 on, so each stage is judged
    by the metric its training data targets. Stages not evaluated, or first in order, are skipped.
    """
    stages = list(evals)
    checks = []
    for stage, rule in expect.items():
        if rule.get("better") not in ("lower", "higher"):
            raise ValueError(f"report.expect.{stage}.better is {rule.get('better')!r}: use lower or higher")
        position = stages.index(stage) if stage in evals else 0
        if position == 0:
            continue
        before_stage = stages[position - 1]
        before = evals[before_stage].get(rule["task"], {}).get(rule["metric"])
        after = evals[stage].get(rule["task"], {}).get(rule["metric"])
        if before is None or after is None:
            continue
        checks.append({"stage": stage, "task": rule["task"], "metric": rule["metric"], "better": rule["better"],
                       "before_stage": before_stage, "before": before, "after": after,
                       "ok": after < before if rule["better"] == "lower" else after > before})
    return checks


def checks_table(checks: list[dict]) -> list[list[str]]:
    rows = [["stage", "task", "metric", "before", "after", "expected", "as expected"]]
    for c in checks:
        rows.append([c["stage"], c["task"], c["metric"], f"{c['before']:.3f} ({c['before_stage']})",
                     f"{c['after']:.3f}", c["better"], "yes" if c["ok"] else "NO"])
    return rows


def plot_eval(evals: dict[str, dict], out: Path) -> str:
    stages = list(evals)
    cats = sorted({c for m in evals.values() for c in m.get("category", {})})
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / max(1, len(stages))
    for ax, metric in zip(axes, ("mc_accuracy", "accuracy")):
        for i, stage in enumerate(stages):
            vals = [evals[stage].get("category", {}).get(c, {}).get(metric, 0.0) for c in cats]
            ax.bar(np.arange(len(cats)) + i * width, vals, width, label=stage)
        ax.set_xticks(np.arange(len(cats)) + 0.4 - width / 2, cats, rotation=20, fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(f"{metric} per category")
    axes[0].legend(fontsize=8)
    return _save(fig, out / "eval_by_category.png")


def plot_headline(evals: dict[str, dict], out: Path) -> str:
    """Held-out caption (align) and description (mid) losses per stage; easy-vqa accuracies vs blind."""
    stages = list(evals)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    for task in ("caption", "description"):
        left.plot(stages, [evals[s].get(task, {}).get("loss", np.nan) for s in stages], marker="o", label=task)
    left.set_title("held-out loss (NLL/token)")
    left.legend(fontsize=8)
    for metric in ("accuracy", "mc_accuracy"):
        right.plot(stages, [evals[s].get("easyvqa", {}).get(metric, np.nan) for s in stages], marker="o",
                   label=metric)
    blind = next((evals[s]["easyvqa"]["blind_accuracy"] for s in stages if "blind_accuracy" in
                  evals[s].get("easyvqa", {})), None)
    if blind is not None:
        right.axhline(blind, linestyle="--", color="gray", label="blind baseline")
    right.set_ylim(0, 1)
    right.set_title("easy-vqa test split")
    right.legend(fontsize=8)
    return _save(fig, out / "eval_per_stage.png")


def plot_losses(curves: dict[str, list[tuple[int, float]]], out: Path) -> str:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    offset = 0
    for stage, points in curves.items():
        steps = [offset + s for s, _ in points]
        ax.plot(steps, [v for _, v in points], label=stage)
        offset = steps[-1] + 1 if steps else offset
    ax.set_xlabel("step (stages back to back)")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=8)
    return _save(fig, out / "loss_curves.png")


def plot_coverage(balance: dict, out: Path) -> str:
    fig, ax = plt.subplots(figsize=(5, 3.2))
    names = ["before (pool)", "random subset", "balanced subset"]
    ax.bar(names, [balance["coverage_before"], balance["coverage_random"], balance["coverage_after"]],
           color=["gray", "tab:orange", "tab:green"])
    ax.set_ylabel("concept coverage")
    ax.set_title(f"{balance.get('method', '')}: {balance['selected']} of {balance['pool']}")
    return _save(fig, out / "concept_coverage.png")


def pack_fills(packs: Path, capacity: int) -> np.ndarray:
    """Fill fraction of every pack of a pack artifact (its ``packs.parquet`` token counts)."""
    return pq.read_table(packs, columns=["tokens"])["tokens"].to_numpy().astype(float) / capacity


def plot_fill(fills: dict[str, np.ndarray], out: Path) -> str:
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for stage, f in fills.items():
        ax.hist(f, bins=np.linspace(0, 1, 41), alpha=0.6, label=f"{stage} (mean {f.mean():.3f})")
    ax.set_xlabel("pack fill (tokens / capacity)")
    ax.set_ylabel("packs")
    ax.legend(fontsize=8)
    return _save(fig, out / "pack_fill.png")


def plot_times(seconds: dict[str, float], out: Path) -> str:
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(seconds) + 1))
    names = list(seconds)
    ax.barh(names, [seconds[n] for n in names])
    ax.invert_yaxis()
    ax.set_xlabel("wall time (s)")
    return _save(fig, out / "wall_time.png")


def read_loss(live_dir: Path) -> list[tuple[int, float]] | None:
    path = live_dir / "plots" / "metrics" / "loss.tsv"
    if not path.is_file():
        return None
    with open(path) as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f, delimiter="\t")]


def _md_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[1:]])


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table border=1 cellpadding=3><tr>{head}</tr>{body}</table>"


def build_report(root: Path, out: Path, eval_stages: list[str], train_stages: list[str],
                 pack_dirs: dict[str, Path], timed: list[str], expect: dict[str, dict] | None = None,
                 published: dict | None = None) -> dict:
    """Write ``report.md``, ``report.html`` and the PNGs into ``out``; return a summary (sections built, whether
    each stage moved its own metric the expected way, see :func:`stage_checks`, and, where lmms-eval benchmarks
    were run, this build beside the published scores: ``published`` is ``report.published``, i.e. the ``model``
    column reproduced, the ``stage`` compared and the ``tolerance`` in points)."""
    metrics = root / "metrics"
    sections: list[tuple[str, str | None, list[list[str]] | None, str]] = []  # title, png, table, note

    evals = {s: m for s in eval_stages if (m := _read_json(metrics / f"eval_{s}.json")) is not None}
    checks = stage_checks(evals, expect or {})
    if checks:
        sections.append(("What each stage bought", None, checks_table(checks),
                         "Each stage's own metric (report.expect in params.yaml) beside the stage evaluated "
                         "before it."))
    if evals:
        sections.append(("Headline metrics per stage", plot_headline(evals, out), None, ""))
        sections.append(("Evaluation per stage and category", plot_eval(evals, out), eval_table(evals),
                         "accuracy = greedy generation, normalised exact match; mc_accuracy = log-likelihood "
                         "multiple choice; loss = NLL per answer token; blind = most frequent training answer "
                         "per question pattern (no image)."))
    comparison = []
    if any("lmms" in m for m in evals.values()):
        sections.append(("lmms-eval benchmarks per stage", None, lmms_table(evals), lmms_note(evals)))
        cfg = published or {"model": "", "stage": list(evals)[-1], "tolerance": 0.0}  # no model: no Δ column
        table = load_table()
        comparison = compare(table, evals.get(cfg["stage"], {}).get("lmms", {}), cfg["model"], cfg["tolerance"])
        notes = "; ".join(f"{r['name']}: {r['note']}" for r in comparison if r["note"])
        sections.append(("Published benchmarks", None,
                         comparison_table(comparison, table, cfg["model"], cfg["stage"], cfg["tolerance"]),
                         f"Published: {table['source'].strip()}. This build: lmms-eval through the project's "
                         f"adapter, in percent. " + (f"{notes}." if notes else "")))
    curves = {s: c for s in train_stages if (c := read_loss(root / "plots" / f"train_{s}"))}
    if curves:
        sections.append(("Training loss per stage", plot_losses(curves, out), None, ""))
    balance = _read_json(metrics / "balance.json")
    if balance:
        sections.append(("Concept coverage before/after balancing", plot_coverage(balance, out), None, ""))
    fills = {}
    for s, folder in pack_dirs.items():
        packs, pm = folder / "packs.parquet", _read_json(metrics / f"pack_{s}.json")
        if packs.is_file() and pm:
            fills[s] = pack_fills(packs, pm["capacity"])
    if fills:
        sections.append(("Pack fill", plot_fill(fills, out), None, ""))
    seconds = {n: m["seconds"] for n in timed if (m := _read_json(metrics / f"{n}.json")) and "seconds" in m}
    if seconds:
        sections.append(("Wall time per stage", plot_times(seconds, out),
                         [["stage", "seconds"], *([n, f"{v:.1f}"] for n, v in seconds.items())], ""))

    md = ["# llava-ov build report", ""]
    body = ["<h1>llava-ov build report</h1>"]
    for title, png, table, note in sections:
        md += [f"## {title}", ""]
        body.append(f"<h2>{html.escape(title)}</h2>")
        if png:
            md += [f"![{title}]({png})", ""]
            body.append(f'<img src="{png}">')
        if table:
            md += [_md_table(table), ""]
            body.append(_html_table(table))
        if note:
            md += [note, ""]
            body.append(f"<p>{html.escape(note)}</p>")
    missing = [name for name, ok in [("evaluation", evals), ("training loss", curves), ("concept coverage", balance),
                                     ("pack fill", fills), ("wall time", seconds)] if not ok]
    if missing:
        md += [f"Not built yet: {', '.join(missing)}.", ""]
        body.append(f"<p>Not built yet: {html.escape(', '.join(missing))}.</p>")
    (out / "report.md").write_text("\n".join(md))
    (out / "report.html").write_text("<!doctype html><html><body>" + "\n".join(body) + "</body></html>\n")
    return {"sections": len(sections), "missing": missing, "eval_stages": list(evals), "train_stages": list(curves),
            "as_expected": {c["stage"]: c["ok"] for c in checks},
            **({"published": {r["task"]: {k: r[k] for k in ("value", "published", "delta", "within_tolerance")}
                              for r in comparison}} if comparison else {})}
