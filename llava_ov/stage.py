"""Stage contracts in one place, and what every stage script does around its library call.

``KINDS`` is every artifact kind with the schema this code reads and writes; ``ARTIFACTS`` every artifact of the
graph with the stage that writes it and its kind. Paths are not written in stage scripts: ``dvc.yaml`` passes
each stage its input and output paths on the command line (``--in NAME=PATH``, ``--out PATH``, ``--metrics PATH``),
and ``tests/test_stage_contracts.py`` checks them against ``ARTIFACTS`` and the stage's declared deps and outs.

A stage script is then: read params, open inputs, call the library, write the artifact, hand over its metrics::

    def main() -> None:
        with stage_run("lengths") as run:
            ingest = run.open("ingest")
            with run.writer(params={...}, inputs={...}) as w:
                ...
            run.metrics.update(...)

:func:`stage_run` times the stage (``seconds``), writes ``metrics/<artifact>.json`` and prints it.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from llava_ov.artifacts import Artifact, ArtifactWriter, open_artifact, write_json
from llava_ov.params import load_params

KINDS: dict[str, int] = {  # artifact kind -> the schema this code reads and writes
    "ingest": 1, "tokenizer": 1, "lengths": 2, "pack": 2, "vit": 1, "llm": 1, "hf_model": 1,
    "concept_encoder": 1, "concept_index": 2, "balance": 1, "eval": 1, "report": 1,
}
TRAIN_STAGES = ("stage1", "stage1_5", "stage2")
EVAL_STAGES = ("stage0", *TRAIN_STAGES)


@dataclass(frozen=True)
class Contract:
    """An artifact of the graph: its name (``artifacts/<name>``), the DVC stage that writes it, and its kind."""

    name: str
    stage: str
    kind: str

    @property
    def schema(self) -> int:
        return KINDS[self.kind]

    @property
    def path(self) -> str:
        return f"artifacts/{self.name}"

    @property
    def metrics(self) -> str:
        return f"metrics/{self.name}.json"


ARTIFACTS: dict[str, Contract] = {c.name: c for c in [
    Contract("ingest", "ingest", "ingest"), Contract("tokenizer", "tokenizer", "tokenizer"),
    Contract("lengths", "lengths", "lengths"), Contract("vit_base", "vit_base", "vit"),
    Contract("llm_base", "llm_base", "llm"), Contract("stage0", "stage0", "hf_model"),
    Contract("concept_encoder", "concept_encoder", "concept_encoder"),
    Contract("concept_index", "concept_index", "concept_index"), Contract("balance", "balance", "balance"),
    Contract("report", "report", "report"),
    *(Contract(f"pack_{s}", f"pack@{s}", "pack") for s in TRAIN_STAGES),
    *(Contract(f"train_{s}", f"train@{s}", "hf_model") for s in TRAIN_STAGES),
    *(Contract(f"eval_{s}", f"eval@{s}", "eval") for s in EVAL_STAGES),
]}


def contract(name: str) -> Contract:
    if name not in ARTIFACTS:
        raise KeyError(f"no artifact {name!r} in the stage contracts (llava_ov/stage.py); known: {sorted(ARTIFACTS)}")
    return ARTIFACTS[name]


def open_input(path: Path | str, kind: str) -> Artifact:
    """Open an artifact of ``kind`` at ``path`` with the schema this code reads."""
    return open_artifact(path, kind, KINDS[kind])


@dataclass
class StageRun:
    """One run of a stage: its params, the paths ``dvc.yaml`` gave it, the metrics it will write."""

    name: str
    output: Contract
    params: dict
    inputs: dict[str, Path]
    out: Path
    metrics_path: Path
    variant: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        """Where input ``name`` is: as ``dvc.yaml`` gave it, else the graph's own path for that artifact."""
        if name in self.inputs:
            return self.inputs[name]
        if name in ARTIFACTS:
            return Path(ARTIFACTS[name].path)
        raise KeyError(f"stage {self.name}: input {name!r} was not given (dvc.yaml: --in {name}=PATH)")

    def open(self, name: str, kind: str | None = None) -> Artifact:
        """The input ``name`` (an artifact of the graph, or a role such as ``init`` with its ``kind``)."""
        return open_input(self.path(name), kind or contract(name).kind)

    def writer(self, **kwargs) -> ArtifactWriter:
        """The writer of this stage's artifact (``params``, ``inputs`` and ``stats`` as ArtifactWriter takes)."""
        return ArtifactWriter(self.out, self.output.kind, self.output.schema, **kwargs)


def parse_args(argv: Sequence[str], variants: Sequence[str] = ()) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m stages.<name>")
    if variants:
        ap.add_argument("variant", choices=list(variants))
    ap.add_argument("--in", dest="inputs", action="append", default=[], metavar="NAME=PATH",
                    help="an input artifact (repeatable); dvc.yaml passes every input")
    ap.add_argument("--out", type=Path, help="the artifact folder this stage writes")
    ap.add_argument("--metrics", type=Path, help="the metrics file this stage writes")
    args, rest = ap.parse_known_args(list(argv))
    args.rest = rest
    return args


@contextmanager
def stage_run(output: str, variants: Sequence[str] = (), argv: Sequence[str] | None = None) -> Iterator[StageRun]:
    """Run a stage writing artifact ``output`` (``{variant}`` is filled from the command line, e.g. ``pack_{variant}``).

    Inputs and paths come from the command line (``dvc.yaml``); without them, from :data:`ARTIFACTS` (a stage run
    by hand). On success the metrics get ``seconds`` (wall time of the whole stage) and are written and printed.
    """
    args = parse_args(sys.argv[1:] if argv is None else argv, variants)
    if args.rest:
        raise SystemExit(f"stage {output}: unknown arguments {args.rest}")
    variant = getattr(args, "variant", None)
    produced = contract(output.format(variant=variant))
    inputs = {}
    for item in args.inputs:
        name, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"stage {produced.stage}: --in takes NAME=PATH, got {item!r}")
        inputs[name] = Path(path)
    run = StageRun(produced.stage, produced, load_params(), inputs, args.out or Path(produced.path),
                   args.metrics or Path(produced.metrics), variant)
    t0 = time.perf_counter()
    yield run
    run.metrics["seconds"] = round(time.perf_counter() - t0, 2)
    write_json(run.metrics_path, run.metrics)
    print(f"{produced.stage}: {run.metrics}")
