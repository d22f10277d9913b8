"""Comparing DVC experiments at a glance: the params that differ and chosen metrics, one column per experiment.

Input is ``dvc exp show --json`` (DVC 3.x): a list of commits, each ``{"rev", "name", "data": {"params": {file:
{"data": {...}}}, "metrics": {file: {"data": {...}}}}, "experiments": [{"name", "executor": {"state"},
"revs": [{"rev", "name", "data", "error"}]}]}``. The first entry is the workspace. Each experiment becomes one
column after its baseline commit; rows are the params that differ between the columns (the mix being swept) and
then the metrics matched by ``file:key`` patterns, where ``file`` is the stem of ``metrics/<file>.json`` and
``key`` a dotted path with ``*`` wildcards (``eval_stage2:category.*.mc_accuracy``).

An experiment run only up to some stage (``dvc exp run ... balance``) still carries the downstream metrics files of
its baseline. Shown as its own, they would lie, so every column's ``dvc.lock`` is checked: a stage is *stale* when
a dep's recorded hash differs from what the upstream stage's recorded output now is, when a param it read differs
from the column's ``params.yaml``, or when it is downstream of a stale stage. Metrics of stale stages are marked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from llava_ov.params import parse_yaml

# What a data-mix sweep is judged by: what balance selected, how training went, what the checkpoints score.
DEFAULT_METRICS = (
    "balance:selected", "balance:coverage_after", "balance:tail_share_after",
    "train_stage1_5:final_loss", "train_stage2:final_loss",
    "eval_stage1_5:caption.loss", "eval_stage2:caption.loss",
    "eval_stage2:easyvqa.accuracy", "eval_stage2:easyvqa.mc_accuracy", "eval_stage2:category.*.mc_accuracy",
)


@dataclass
class Column:
    """One commit or experiment: its name, state, flattened params and metrics."""

    name: str
    rev: str
    full_rev: str
    state: str
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    stale: set[str] | None = None  # metrics files (stems) from stale stages; None: not checked


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _column(name: str, rev: str, state: str, data: dict | None) -> Column:
    data = data or {}
    params: dict[str, Any] = {}
    for file, entry in (data.get("params") or {}).items():
        prefix = "" if file == "params.yaml" else f"{file}:"
        params.update({f"{prefix}{k}": v for k, v in flatten((entry or {}).get("data") or {}).items()})
    metrics: dict[str, Any] = {}
    for file, entry in (data.get("metrics") or {}).items():
        stem = Path(file).stem
        metrics.update({f"{stem}:{k}": v for k, v in flatten((entry or {}).get("data") or {}).items()})
    return Column(name=name, rev=rev[:7], full_rev=rev, state=state, params=params, metrics=metrics)


def columns(exp_show: list[dict], workspace: bool = False) -> list[Column]:
    """Baselines and their experiments, in ``dvc exp show`` order (the workspace only if asked)."""
    out = []
    for commit in exp_show:
        if commit.get("rev") == "workspace":
            if workspace:
                out.append(_column("workspace", "workspace", "workspace", commit.get("data")))
            continue
        out.append(_column(commit.get("name") or commit["rev"][:7], commit["rev"], "baseline", commit.get("data")))
        for exp in commit.get("experiments") or []:
            rev = (exp.get("revs") or [{}])[0]
            state = (exp.get("executor") or {}).get("state") or ("failed" if rev.get("error") else "success")
            out.append(_column(exp.get("name") or rev.get("name") or rev.get("rev", "?")[:7], rev.get("rev", ""),
                               state, rev.get("data")))
    return out


def changed_params(cols: list[Column], patterns: tuple[str, ...] = ()) -> list[str]:
    """Params whose values differ between the columns, plus any matching ``patterns``, in params.yaml order."""
    keys: list[str] = []
    for col in cols:
        keys.extend(k for k in col.params if k not in keys)
    return [k for k in keys if len({json.dumps(c.params.get(k), sort_keys=True) for c in cols}) > 1
            or any(fnmatchcase(k, p) for p in patterns)]


def matched_metrics(cols: list[Column], patterns: tuple[str, ...]) -> list[str]:
    """Metric keys matching ``patterns``, in pattern order, then file order."""
    keys: list[str] = []
    for col in cols:
        keys.extend(k for k in col.metrics if k not in keys)
    return [k for p in patterns for k in keys if fnmatchcase(k, p)]


_MISSING = object()


def stale_stages(lock: dict, params: dict[str, Any]) -> set[str]:
    """Stages of a ``dvc.lock`` whose recorded inputs no longer match (see the module docstring)."""
    stages = lock.get("stages") or {}
    produced = {o["path"]: o.get("md5") for st in stages.values() for o in st.get("outs") or []}
    producer = {o["path"]: name for name, st in stages.items() for o in st.get("outs") or []}

    def changed(st: dict) -> bool:
        if any(d["path"] in produced and d.get("md5") != produced[d["path"]] for d in st.get("deps") or []):
            return True
        for file, values in (st.get("params") or {}).items():
            prefix = "" if file == "params.yaml" else f"{file}:"
            if any(params.get(prefix + k, _MISSING) != v for k, v in flatten(values).items()):
                return True
        return False

    stale = {name for name, st in stages.items() if changed(st)}
    grew = True
    while grew:  # downstream of a stale stage is stale
        grew = False
        for name, st in stages.items():
            if name not in stale and any(producer.get(d["path"]) in stale for d in st.get("deps") or []):
                stale.add(name)
                grew = True
    return stale


def stale_metric_files(lock: dict, params: dict[str, Any]) -> set[str]:
    """Stems of the ``metrics/*.json`` files that stale stages wrote."""
    stages = lock.get("stages") or {}
    return {Path(o["path"]).stem for name in stale_stages(lock, params) for o in stages[name].get("outs") or []
            if o["path"].startswith("metrics/") and o["path"].endswith(".json")}


def mark_stale(root: Path, cols: list[Column]) -> None:
    """Set ``stale`` on each column from its own ``dvc.lock`` (``git show REV:dvc.lock``; the file for the
    workspace). A column whose lock cannot be read keeps ``None``."""
    for col in cols:
        if col.full_rev == "workspace":
            path = root / "dvc.lock"
            text = path.read_text() if path.exists() else None
        else:
            proc = subprocess.run(["git", "show", f"{col.full_rev}:dvc.lock"], cwd=root, capture_output=True,
                                  text=True)
            text = proc.stdout if proc.returncode == 0 else None
        if text is not None:
            col.stale = stale_metric_files(parse_yaml(text), col.params)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def format_comparison(cols: list[Column], params: list[str], metrics: list[str]) -> str:
    """A Markdown table: one row per changed param, then per metric; one column per commit/experiment."""
    head = ["", *[c.name for c in cols]]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * len(cols) + "|",
             "| state | " + " | ".join(c.state if c.rev == c.state else f"{c.state} {c.rev}" for c in cols) + " |"]
    for key in params:
        lines.append(f"| {key} | " + " | ".join(_cell(c.params.get(key)) for c in cols) + " |")
    for key in metrics:
        stem = key.split(":", 1)[0]
        lines.append(f"| {key} | " + " | ".join(
            _cell(c.metrics.get(key)) + (" *" if c.stale and stem in c.stale and key in c.metrics else "")
            for c in cols) + " |")
    if any(c.stale for c in cols):
        lines.append("\n* stale: written by a stage that did not rerun in this column although its inputs changed "
                     "(an experiment run only up to an earlier stage); run it through that stage to compare")
    unchecked = [c.name for c in cols if c.stale is None]
    if unchecked:
        lines.append(f"\nnot checked for stale metrics (no dvc.lock readable): {', '.join(unchecked)}")
    return "\n".join(lines)


def exp_show(root: Path) -> list[dict]:
    """``dvc exp show --json`` of the project at ``root``."""
    proc = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=root, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"dvc exp show --json failed in {root}: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout)
