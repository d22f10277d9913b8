"""lmms-eval tasks as the eval stage runs them: found by name, pointed at local data, pinned by digests.

A task is found the way lmms-eval's ``TaskManager`` finds it (lmms-eval's own task folder first, then the
``include_path`` folders), but by a text scan for its ``task:`` line instead of parsing the ~2,000 YAML files
that ``TaskManager`` indexes (a minute on a busy 2-core machine). Its YAML is then loaded with lmms-eval's own
loader (``include``s merged, ``!function``s imported, relative ``data_files`` resolved) and the task object is
built with lmms-eval's ``ConfigurableTask``, exactly as ``TaskManager`` would build it.

The config digest (a part of the result cache key) covers the resolved config (dataset location excluded: the
dataset digest covers the data), the source file of every function it names (``utils.py``: prompts, answer
extraction, scoring), the lmms-eval version (its shared helpers) and the model name that selects the task's
model-specific prompt.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lmms_eval.api.metrics  # noqa: F401  (registers the metrics that task configs name)
from lmms_eval.api.task import ConfigurableTask
from lmms_eval.utils import load_yaml_config

from llava_ov.artifacts import digest_file, digest_json
from llava_ov.eval.lmms_adapter import MODEL_ID
from llava_ov.eval.lmms_data import LocalData, locate, undecodable

LMMS_TASKS_DIR = Path(lmms_eval.__file__).parent / "tasks"
DATASET_KEYS = ("dataset_path", "dataset_name", "dataset_kwargs")


def find_task_yaml(name: str, include_path: Sequence[str | Path] = ()) -> Path:
    """The YAML file that defines task ``name`` (lmms-eval's folder wins over ``include_path``, as in lmms-eval)."""
    line = re.compile(rf"^task:\s*[\"']?{re.escape(name)}[\"']?\s*(#.*)?$", re.M)
    group = re.compile(rf"^group:\s*[\"']?{re.escape(name)}[\"']?\s*(#.*)?$", re.M)
    for folder in (LMMS_TASKS_DIR, *map(Path, include_path)):
        for path in sorted(Path(folder).rglob("*.yaml")):
            text = path.read_text(errors="replace")
            if line.search(text):
                return path
            if group.search(text):
                raise ValueError(f"lmms-eval task {name!r} is a group ({path}); list its tasks in eval.lmms.tasks")
    raise ValueError(f"no lmms-eval task {name!r} in lmms-eval {importlib.metadata.version('lmms_eval')} or in "
                     f"include_path {list(map(str, include_path))}")


def _canonical(value):
    """A JSON-able stand-in for a config value; a function or class stands for its name and source file bytes."""
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if callable(value):
        try:
            source = inspect.getsourcefile(value)
        except TypeError:  # a builtin
            source = None
        return {"callable": getattr(value, "__qualname__", repr(value)), "source": digest_file(source) if source
                else None}
    return repr(value)


def config_digest(config: dict, model_name: str) -> str:
    """Digest of what a task asks and how it scores (see the module docstring)."""
    pinned = {k: v for k, v in config.items() if k not in DATASET_KEYS}
    return digest_json({"config": _canonical(pinned), "lmms_eval": importlib.metadata.version("lmms_eval"),
                        "model_name": model_name})


@dataclass(frozen=True)
class LmmsTask:
    """One lmms-eval task, resolved but not loaded: its config, local data and digests."""

    name: str
    yaml: Path
    config: dict
    data: LocalData
    config_digest: str
    model_name: str

    @property
    def output_type(self) -> str:
        return self.config.get("output_type") or "generate_until"

    def build(self):
        """(lmms-eval task object, failures): the task reads the local copy, and items whose images do not decode
        are dropped before lmms-eval sees them; ``failures`` maps their row index to the reason. The task object
        is None when no item is left."""
        dataset = self.data.load()
        failures = undecodable(dataset)
        config = {**self.config, **self.data.overrides}
        keep = [i for i in range(len(dataset)) if i not in failures]
        if not keep:
            return None, failures
        if failures:
            config["process_docs"] = _dropping(keep, len(dataset), config.get("process_docs"))
        task = ConfigurableTask(config=config, model_name=self.model_name)
        if task.get_config("num_fewshot") is None:  # what lmms-eval's simple_evaluate sets: zero-shot
            task.set_config(key="num_fewshot", value=0)
        return task, failures


def _dropping(keep: list[int], rows: int, then):
    """A ``process_docs`` that keeps rows ``keep`` of the evaluation split, then runs the task's own one."""
    def process_docs(dataset):
        kept = dataset.select(keep) if len(dataset) == rows else dataset  # another split: untouched
        return then(kept) if then else kept
    return process_docs


def resolve(name: str, data_dir: Path | str, include_path: Sequence[str | Path] = (),
            model_name: str = MODEL_ID) -> LmmsTask:
    """Find, load and pin task ``name``; its dataset must be available locally (:func:`lmms_data.locate`)."""
    path = find_task_yaml(name, include_path)
    config = load_yaml_config(str(path), mode="full")
    if "class" in config:
        raise ValueError(f"lmms-eval task {name!r} ({path}) is a Python task class; only YAML tasks are supported")
    return LmmsTask(name=name, yaml=path, config=config, data=locate(name, config, data_dir),
                    config_digest=config_digest(config, model_name), model_name=model_name)
