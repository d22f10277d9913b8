"""Incrementality: which stages a change reruns, asserted on the real ``dvc.yaml`` and ``params.yaml``.

How the graph is made "built" cheaply. ``dvc repro --dry`` is meaningful only when every stage has a lock entry;
building the default profile for real takes ~15 minutes. The ``placeholder_graph`` fixture instead copies the
project, writes a **placeholder** file or folder for every declared output (``dvc.yaml``'s ``outs``/``metrics``/
``plots``) and records the graph with ``dvc commit -f``. The outputs are fake, but everything the assertions depend
on is real: the stage definitions, the params DVC reads from ``params.yaml``, and the hashes of the real source
files. ``test_placeholders_agree_with_a_real_build`` (e2e) checks that a real smoke build answers the same.

What ``dvc repro --dry`` reports (DVC 3.67). It lists the stages whose *own* inputs changed: their params, their
code deps or their stage definition. A stage downstream of one of them is checked against its deps on disk, which
a dry run leaves untouched, so it is not listed. ``dvc repro --dry --force-downstream`` lists the upper bound: the
changed stages and everything downstream. A real ``dvc repro`` reruns something in between: a downstream stage
reruns only if an upstream output's bytes really changed (content addressing), so e.g. ``lengths.pools`` reruns
``lengths``, whose identical output (when the pools' rows are the same) stops the cascade; and a change reverted later is restored from the run cache
without running anything. The ``downstream`` column is that upper bound.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from llava_ov.code_digest import import_closure
from llava_ov.params import read_yaml
from tests.project import copy_project, git, run, stages_that_would_run

PACKS = ["pack@stage1", "pack@stage1_5", "pack@stage2"]
TRAINS = ["train@stage1", "train@stage1_5", "train@stage2"]
EVALS = ["eval@stage0", "eval@stage1", "eval@stage1_5", "eval@stage2"]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # dvc's pygtrie use, thousands per run

ALL = ["ingest", "tokenizer", "lengths", *PACKS, "vit_base", "llm_base", "stage0", "concept_encoder",
       "concept_index", "balance", *TRAINS, *EVALS, "report"]

# (dotted params key, new value) -> the stages `dvc repro --dry` must list, exactly.
PARAM_CHANGES = [
    ("profile", "renamed", []),  # the profile's name is a label, read by no stage
    ("seed", 1, ["ingest", "vit_base", "llm_base", "stage0", "concept_encoder", *TRAINS]),
    ("ingest.sources.emoji.align", 1201, ["ingest"]),
    ("ingest.shard_max_bytes", 500_000_000, ["ingest"]),
    ("ingest.dedupe", False, ["ingest"]),
    ("ingest.filters", {"mid": {"black_images": True}}, ["ingest"]),
    ("tokenizer.vocab_size", 2048, ["tokenizer"]),
    ("image.max_pixels", 20000, ["lengths", *PACKS, "vit_base", "stage0"]),
    ("lengths.pools", ["align", "mid"], ["lengths"]),
    ("engine.cpus", 1, []),  # where shards run, never what they compute: no stage declares it
    ("pack.stage2.capacity", 1024, ["pack@stage2"]),
    ("pack.stage1_5.patch_capacity", 2048, ["pack@stage1_5"]),
    ("vit_base.epochs", 4, ["vit_base"]),
    ("llm_base.steps", 101, ["llm_base"]),
    ("stage0.tolerance", 0.001, ["stage0"]),
    ("concepts.encoder.epochs", 3, ["concept_encoder"]),
    ("concepts.vocabulary.wordnet_limit", 20000, ["concept_encoder"]),
    ("concepts.encoder.recall_sample", 1000, ["concept_encoder"]),
    ("concepts.topk", 4, ["concept_index"]),
    ("concepts.index.dtype", "bfloat16", ["concept_index"]),
    ("concepts.index.batch", 512, ["concept_index"]),
    ("engine.executor", "local", []),
    ("balance.mix.emoji", 2.0, ["balance"]),
    ("balance.method", "metaclip_threshold", ["balance"]),
    ("balance.target", 3000, ["balance"]),
    ("train.common.micro_batch", 4, TRAINS),
    ("train.common.warmup_fraction", 0.1, TRAINS),
    ("train.common.dtype", "bf16", TRAINS),
    ("train.nnodes.stage1_5", 2, ["train@stage1_5"]),
    ("train.stage1.lr", 0.002, ["train@stage1"]),
    ("train.stage1_5.steps", 61, ["train@stage1_5"]),
    ("train.stage2.lr", 0.0001, ["train@stage2"]),
    ("eval.tasks", ["easyvqa", "emoji"], EVALS),
    ("eval.max_items", 10, EVALS),
    ("eval.lmms.max_pixels", 2560000, EVALS),
    ("report.published.tolerance", 1.0, ["report"]),
    ("report.eval_stages", ["stage0", "stage2"], ["report"]),
]

# project file edited (a comment appended: DVC hashes content, not mtimes) -> the stages that list it as a dep.
FILE_CHANGES = [
    ("llava_ov/concepts/balance.py", ["balance"]),
    ("llava_ov/concepts/index.py", ["concept_encoder", "concept_index"]),
    ("llava_ov/concepts/draws.py", ["concept_encoder", "concept_index", "balance"]),
    ("llava_ov/concepts/shard_index.py", ["concept_index"]),
    ("llava_ov/engine.py", ["ingest", "lengths", *PACKS, "concept_index"]),
    ("llava_ov/stage.py", ALL),  # every stage script runs through stage_run / the contracts
    ("llava_ov/eval/scoring.py", EVALS),
    ("llava_ov/eval/tasks/easyvqa.yaml", EVALS),
    ("llava_ov/eval/report.py", ["report"]),
    ("llava_ov/eval/lmms_likelihood.py", EVALS),
    ("llava_ov/eval/published/llava_onevision_1_5.yaml", ["report"]),
    ("llava_ov/packing/plan.py", PACKS),
    ("llava_ov/packing/loader.py", TRAINS),
    ("llava_ov/megatron/compat.py", TRAINS),
    ("llava_ov/train/launch.py", TRAINS),
    ("llava_ov/data/sources/emoji.py", ["ingest"]),
    ("llava_ov/data/prompts.py", ["ingest", *EVALS]),  # the sources write them, the eval specs read them
    ("llava_ov/code_digest.py", ["ingest", "lengths", *PACKS, "concept_encoder", "concept_index", *EVALS]),
    ("llava_ov/optim.py", ["vit_base", "llm_base", "concept_encoder", "concept_index"]),
    ("llava_ov/text/template.py", ["tokenizer", "lengths", *PACKS, "llm_base", *EVALS]),
    ("llava_ov/model/rice_vit.py", ["vit_base", "llm_base", "stage0", *TRAINS, *EVALS]),
    ("llava_ov/__init__.py", ALL),  # holds the version every artifact.json records
    ("stages/pack.py", PACKS),
    ("llava_ov/plan.py", []),  # the cost estimate: no stage imports it
    ("llava_ov/cli.py", []),
    ("README.md", []),
    ("data/released/README.md", ["ingest"]),  # the released data folder is a dep of ingest (placeholder in tiny)
]

# change -> every stage a real rerun may reach (`--force-downstream`): what a data-mix sweep shares is the rest.
DOWNSTREAM = [
    (("train.stage2.lr", 0.0001), ["train@stage2", "eval@stage2", "report"]),
    (("pack.stage1.capacity", 1024), ["pack@stage1", *TRAINS, "eval@stage1", "eval@stage1_5", "eval@stage2",
                                      "report"]),
    (("balance.mix.emoji", 2.0), ["balance", "lengths", *PACKS, *TRAINS, "eval@stage1", "eval@stage1_5",
                                  "eval@stage2", "report"]),
    (("eval.tasks", ["easyvqa"]), [*EVALS, "report"]),
]


def set_param(root: Path, dotted: str, value) -> None:
    """Set one key of ``params.yaml`` with a round-trip parser (comments and the other keys stay as they are)."""
    rt = YAML()
    rt.width = 110
    rt.indent(mapping=2, sequence=4, offset=2)
    path = root / "params.yaml"
    doc = rt.load(path.read_text())
    *parents, leaf = dotted.split(".")
    node = doc
    for key in parents:
        node = node[key]
    if leaf not in node:
        raise KeyError(f"params.yaml has no key {dotted!r}: the table is out of date")
    node[leaf] = value
    with open(path, "w") as f:
        rt.dump(doc, f)


def touch_source(root: Path, rel: str) -> None:
    """Change a file's content, harmlessly: a trailing comment in its own syntax."""
    path = root / rel
    assert path.is_file(), f"{rel} does not exist: the table is out of date"
    path.write_text(path.read_text() + ("\n# touched by test_incremental\n" if path.suffix in (".py", ".yaml")
                                        else "\n<!-- touched by test_incremental -->\n"))


def write_placeholders(root: Path) -> None:
    """A placeholder for every output DVC resolves from ``dvc.yaml``: a file where the path has a suffix, else a
    folder with one file (valid JSON for metrics, so nothing that reads them chokes)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        outs = [(stage.addressing, Path(out.fs_path)) for stage in repo.index.stages for out in stage.outs]
    for name, path in outs:
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}\n" if path.suffix == ".json" else f"placeholder output of {name}\n")
        else:
            path.mkdir(parents=True, exist_ok=True)
            (path / "placeholder").write_text(f"placeholder output of {name}\n")


@pytest.fixture(scope="module")
def placeholder_graph(tmp_path_factory) -> Path:
    """A copy of the project (default profile) whose every stage is recorded as built, on placeholder outputs."""
    root = copy_project(tmp_path_factory.mktemp("incremental") / "project")
    write_placeholders(root)
    run(["dvc", "commit", "-f", "-q"], root)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "placeholder build")
    assert stages_that_would_run(root) == [], "the placeholder graph is not up to date after dvc commit"
    return root


def _restore(root: Path) -> None:
    git(root, "checkout", "-q", "--", ".")


def _dry_run(root: Path, force_downstream: bool = False) -> list[str]:
    """Stages ``dvc repro --dry [--force-downstream]`` would run, from ``Repo.reproduce``, the function that CLI
    command calls, in-process (a CLI process per row would spend most of its time starting Python and DVC)."""
    from dvc.repo import Repo

    with contextlib.chdir(root), Repo(".") as repo:  # like the CLI: targets (dvc.yaml) resolve from the cwd
        return [stage.addressing for stage in repo.reproduce(dry=True, force_downstream=force_downstream)]


@pytest.mark.parametrize("key,value,expected", PARAM_CHANGES, ids=[c[0] for c in PARAM_CHANGES])
def test_param_change_reruns_exactly(placeholder_graph, key, value, expected):
    set_param(placeholder_graph, key, value)
    try:
        assert sorted(_dry_run(placeholder_graph)) == sorted(expected)
    finally:
        _restore(placeholder_graph)


@pytest.mark.parametrize("rel,expected", FILE_CHANGES, ids=[c[0] for c in FILE_CHANGES])
def test_source_change_reruns_only_its_importers(placeholder_graph, rel, expected):
    touch_source(placeholder_graph, rel)
    try:
        assert sorted(_dry_run(placeholder_graph)) == sorted(expected)
    finally:
        _restore(placeholder_graph)


@pytest.mark.parametrize("change", ["add", "edit", "remove"])
def test_a_released_source_file_added_changed_or_removed_reruns_ingest(placeholder_graph, change):
    """``data/released`` is a dep of ``ingest``: any change of its files reruns ingest, and nothing else directly."""
    shard = placeholder_graph / "data" / "released" / "instruct" / "part-000.tar"
    if change != "add":
        shard.parent.mkdir(parents=True)
        shard.write_bytes(b"released shard v1")
        run(["dvc", "commit", "-f", "-q", "ingest"], placeholder_graph)
        assert _dry_run(placeholder_graph) == []
    try:
        if change == "remove":
            shard.unlink()
        else:
            shard.parent.mkdir(parents=True, exist_ok=True)
            shard.write_bytes(b"released shard v2")
        assert _dry_run(placeholder_graph) == ["ingest"]
    finally:
        shard.unlink(missing_ok=True)
        shard.parent.rmdir()
        _restore(placeholder_graph)
        run(["dvc", "commit", "-f", "-q", "ingest"], placeholder_graph)


@pytest.mark.parametrize("change,expected", DOWNSTREAM, ids=[c[0][0] for c in DOWNSTREAM])
def test_downstream_upper_bound(placeholder_graph, change, expected):
    set_param(placeholder_graph, *change)
    try:
        assert sorted(_dry_run(placeholder_graph, force_downstream=True)) == sorted(expected)
    finally:
        _restore(placeholder_graph)


def test_every_stage_is_covered_by_the_table():
    """Each stage appears in some row, so a stage added to dvc.yaml without a row here is noticed."""
    lock_names = set(ALL)
    graph = read_yaml(Path(__file__).resolve().parents[1] / "dvc.yaml")["stages"]
    declared = set()
    for name, stage in graph.items():
        declared |= {f"{name}@{item}" for item in stage["foreach"]} if "foreach" in stage else {name}
    assert declared == lock_names
    rows = [e for *_, e in PARAM_CHANGES] + [e for _, e in FILE_CHANGES]
    assert set().union(*map(set, rows)) == lock_names


def stage_module(cmd: str) -> str:
    """The module a stage command runs: ``python -m stages.pack x`` and ``torchrun ... -m stages.train x``."""
    match = re.search(r"(?:^|\s)-m\s+(stages\.\w+)", cmd)
    if not match:
        raise ValueError(f"stage command {cmd!r} does not run a `-m stages.<name>` module")
    return match.group(1)


def covered(path: str, deps: list[str]) -> bool:
    """Whether a declared dep (the file itself or a folder holding it) covers ``path``."""
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def _resolved_stages(root: Path) -> list[tuple[str, str, list[str]]]:
    """(name, cmd, deps as written) of every stage, with DVC's own resolution of foreach/${...}."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return [(s.addressing, s.cmd, [str(d.def_path) for d in s.deps]) for s in repo.index.stages]


def test_declared_code_deps_match_imports(placeholder_graph):
    """Every project module a stage script imports (transitively, lazy imports included) is a declared dep, and
    every declared code dep is imported (or, for a folder, holds data files such as the eval task specs).

    A missing dep is a correctness bug (edit the module and DVC keeps the stale artifact); a needless one reruns
    a stage for nothing. See llava_ov/code_digest.py for what counts as an import."""
    root = placeholder_graph
    problems = []
    for name, cmd, deps in _resolved_stages(root):
        files = import_closure(root, stage_module(cmd))
        missing = sorted(f for f in files if not covered(f, deps))
        if missing:
            problems.append(f"{name}: imports {missing} but dvc.yaml does not list them")
        for dep in deps:
            if not dep.startswith(("llava_ov/", "stages/")):
                continue
            used = any(covered(f, [dep]) for f in files)
            data = (root / dep).is_dir() and any(p.is_file() and p.suffix != ".py" and "__pycache__" not in p.parts
                                                 for p in (root / dep).rglob("*"))
            if not (used or data):
                problems.append(f"{name}: lists {dep} but never imports it")
    assert not problems, "\n".join(problems)


@pytest.mark.e2e
def test_placeholders_agree_with_a_real_build(smoke_project):
    """The same rows on a real smoke build (edited in place, restored byte for byte)."""
    root = smoke_project
    rows = [("params.yaml", lambda: set_param(root, "balance.mix.emoji", 2.0), ["balance"]),
            ("params.yaml", lambda: set_param(root, "train.stage2.lr", 0.0001), ["train@stage2"]),
            ("llava_ov/eval/scoring.py", lambda: touch_source(root, "llava_ov/eval/scoring.py"), EVALS),
            ("llava_ov/packing/plan.py", lambda: touch_source(root, "llava_ov/packing/plan.py"), PACKS)]
    for rel, change, expected in rows:
        before = (root / rel).read_bytes()
        change()
        try:
            assert sorted(stages_that_would_run(root)) == sorted(expected), rel
        finally:
            (root / rel).write_bytes(before)
    assert stages_that_would_run(root) == []

