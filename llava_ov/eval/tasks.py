"""Offline evaluation tasks: specs are data (``llava_ov/eval/tasks/<name>.yaml``), instances are hash-pinned.

A spec says which eval-pool samples a task takes (``select``), how its prompt is formed (``prompt``: the sample's
own user turn, a fixed text, or ``{pool: align}``: that training pool's instruction), what the reference is
(``target``: the sample's answer, a per-source template over it, or ``{pool: align}``: each selected source's
template of that pool), which metrics it reports, how answers are normalised before exact match, how choices are
compared (``mc_score``: summed or per-token mean log-likelihood) and how long a generated answer may be. The
``{pool: ...}`` forms read :mod:`llava_ov.data.prompts`, the strings the sources write the training pools with,
and are resolved when the spec is loaded, so a loaded spec (and its digest) holds the texts themselves.

Building a spec against the ``ingest`` artifact gives a :class:`Task`: the spec plus its items in sorted
sample-id order. Its ``digest`` covers the spec and every item's id, prompt, reference and choices, so a changed
spec or a changed eval pool is a different task, and cached results of the old one are never reused.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from llava_ov.artifacts import digest_json
from llava_ov.data.prompts import POOL_PROMPTS, POOL_TEMPLATES, with_image
from llava_ov.params import read_yaml

SPEC_DIR = Path(__file__).with_name("tasks")
METRICS = ("accuracy", "mc_accuracy", "loss")
SPEC_KEYS = {"name", "select", "prompt", "target", "metrics", "normalise", "mc_score", "max_new_tokens",
             "blind_baseline"}

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
NORMALISERS: dict[str, Callable[[str], str]] = {
    "lower": str.lower,
    "strip_punctuation": lambda s: _PUNCT.sub(" ", s),
    "collapse_whitespace": lambda s: " ".join(s.split()),
    "drop_articles": lambda s: " ".join(w for w in s.split() if w not in ("a", "an", "the")),
}


@dataclass(frozen=True)
class Item:
    """One evaluation instance: prompt text (with ``<image>`` placeholders), its images, reference, choices."""

    sample_id: str
    source: str
    category: str
    prompt: str
    images: tuple[bytes, ...]
    target: str
    choices: tuple[str, ...]


@dataclass(frozen=True)
class Task:
    spec: dict
    items: tuple[Item, ...]
    digest: str = field(default="")

    @property
    def name(self) -> str:
        return self.spec["name"]

    def normalise(self, text: str) -> str:
        """The spec's answer normalisation (always stripped at the ends)."""
        for step in self.spec["normalise"]:
            text = NORMALISERS[step](text)
        return text.strip()


def load_spec(name: str, spec_dir: Path = SPEC_DIR) -> dict:
    """Read and validate one task spec; errors name the file and the offending key."""
    path = spec_dir / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in spec_dir.glob("*.yaml"))
        raise FileNotFoundError(f"no task spec {path}; known tasks: {known}")
    spec = read_yaml(path)
    missing, extra = SPEC_KEYS - set(spec), set(spec) - SPEC_KEYS
    if missing or extra:
        raise ValueError(f"task spec {path}: missing keys {sorted(missing)}, unknown keys {sorted(extra)}")
    if spec["name"] != name:
        raise ValueError(f"task spec {path} is named {spec['name']!r}; the file name must match the task name")
    bad = [m for m in spec["metrics"] if m not in METRICS] + \
          [n for n in spec["normalise"] if n not in NORMALISERS]
    if bad or spec["mc_score"] not in ("sum", "mean"):
        raise ValueError(f"task spec {path}: unknown metrics/normalisers {bad} or mc_score {spec['mc_score']!r}; "
                         f"metrics {METRICS}, normalisers {sorted(NORMALISERS)}, mc_score sum|mean")
    if not set(spec["select"]) <= {"task", "source"}:
        raise ValueError(f"task spec {path}: select may filter on 'task' and/or 'source', got {spec['select']}")
    return _resolve_pool_texts(spec, path)


def _pool_ref(spec: dict, key: str, table: dict, path: Path) -> str | None:
    """The pool that a ``{pool: <pool>}`` value of ``key`` names (one ``table`` knows), or None for a literal."""
    ref = spec[key]
    if not (isinstance(ref, dict) and set(ref) == {"pool"}):
        return None
    if ref["pool"] not in table:
        raise ValueError(f"task spec {path}: {key} names pool {ref['pool']!r}; known: {sorted(table)}")
    return ref["pool"]


def _resolve_pool_texts(spec: dict, path: Path) -> dict:
    """``prompt``/``target`` given as ``{pool: <pool>}`` replaced by the texts of :mod:`llava_ov.data.prompts`:
    the pool's instruction after the image, and the pool's template of each selected source."""
    resolved = dict(spec)
    if pool := _pool_ref(spec, "prompt", POOL_PROMPTS, path):
        resolved["prompt"] = with_image(POOL_PROMPTS[pool])
    if pool := _pool_ref(spec, "target", POOL_TEMPLATES, path):
        sources, templates = spec["select"].get("source") or [], POOL_TEMPLATES[pool]
        sources = [sources] if isinstance(sources, str) else sources
        if not sources or set(sources) - set(templates):
            raise ValueError(f"task spec {path}: target {{pool: {pool}}} needs select.source among the sources "
                             f"with a template for pool {pool}, {sorted(templates)}; got {sources}")
        resolved["target"] = {source: templates[source] for source in sources}
    return resolved


def _selected(spec: dict, sample: dict) -> bool:
    for key, want in spec["select"].items():
        wanted = want if isinstance(want, list) else [want]
        if sample.get(key) not in wanted:
            return False
    return True


def _target(spec: dict, sample: dict) -> str:
    target = spec["target"]
    if target == "answer":
        return sample["answer"]
    if sample["source"] not in target:
        raise ValueError(f"task {spec['name']}: no target template for source {sample['source']!r} "
                         f"(sample {sample['id']}); add one to the spec or narrow its select")
    return target[sample["source"]].format(answer=sample["answer"])


def dialogue(messages: list[dict]) -> list[dict]:
    """The user/assistant turns of a conversation: its optional leading system turn (kept by ingest) left out."""
    return messages[1:] if messages and messages[0]["role"] == "system" else messages


def build_task(spec: dict, samples: Iterable[tuple[dict, list[bytes]]], max_items: int = 0) -> Task:
    """The task's items from eval-pool (sample json, image bytes) pairs, sorted by sample id.

    ``max_items`` (0 = all) keeps the first items in sample-id order: a deterministic subset.
    """
    items = []
    for sample, images in samples:
        if not _selected(spec, sample):
            continue
        turns = dialogue(sample["messages"])
        if turns[0]["role"] != "user":
            raise ValueError(f"eval sample {sample['id']} ({sample['source']}) does not start with a user turn")
        prompt = turns[0]["content"] if spec["prompt"] == "sample" else spec["prompt"]
        items.append(Item(sample_id=sample["id"], source=sample["source"], category=sample["category"],
                          prompt=prompt, images=tuple(images), target=_target(spec, sample),
                          choices=tuple(sample.get("choices") or ())))
    items.sort(key=lambda it: it.sample_id)
    if max_items:
        items = items[:max_items]
    if not items:
        raise ValueError(f"task {spec['name']} selects no eval samples with {spec['select']}: is the eval pool "
                         f"of the ingest artifact built with this source?")
    if "mc_accuracy" in spec["metrics"]:
        no_choice = [it.sample_id for it in items if len(it.choices) < 2]
        if no_choice:
            raise ValueError(f"task {spec['name']}: samples {no_choice[:5]} have fewer than 2 choices; "
                             f"multiple choice needs the eval sample's 'choices'")
    pinned = {"spec": spec, "items": [[it.sample_id, it.prompt, it.target, list(it.choices)] for it in items]}
    return Task(spec=spec, items=tuple(items), digest=digest_json(pinned))
