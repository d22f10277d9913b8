"""What a cost plan is computed from: the profile's model shapes, each stage's data and its training setup.

Data comes from the built artifacts when they exist (``artifacts/pack_<stage>/plan.parquet`` names the packed
samples, ``artifacts/lengths/lengths.parquet`` their exact token counts, so means and pack fill are measured, not
guessed); on the ``4b``/``8b`` profiles, where nothing is built yet, the caller passes the counts. Shapes come
from the params that the base-model stages read: the tiny/smoke profiles pretrain the shapes in ``vit_base``/
``llm_base``; the real profiles import base models of the size they name (``llm_base.size``), whose shapes are in
the model-family registry (``llava_ov.model.family``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llava_ov.plan import LMShape, ViTShape

@dataclass(frozen=True)
class StageData:
    """One training stage's input: sample count, mean tokens per sample, and how they pack."""

    stage: str
    samples: int
    text_tokens: float
    image_tokens: float
    seq_len: int
    fill: float
    origin: str  # where the counts came from (an artifact path, or "given")


@dataclass(frozen=True)
class TrainingSetup:
    """The params a stage trains with that a cost depends on."""

    global_batch: int
    steps: int
    trainable: str  # "merger" (ViT and LLM frozen) or "all"


def model_shapes(params: dict, model: str | None = None) -> tuple[str, LMShape, ViTShape]:
    """(name, LM, ViT) of size ``model``, else of the profile's imported size, else of its pretrained shapes."""
    llm, vit = params["llm_base"], params["vit_base"]
    imported = llm.get("source") != "pretrain" or vit.get("source") != "pretrain"
    if model is not None or imported:
        from llava_ov.model.family import family  # imports transformers: only for the registry

        name = model or llm["size"]
        shape = family().size(name, "--model" if model else "llm_base.size")
        return name, LMShape.from_hf(shape.text), ViTShape.from_hf(shape.vision, shape.text["hidden_size"])
    text = {**llm, "vocab_size": params["tokenizer"]["vocab_size"]}
    vision = {**vit, "patch_size": params["image"]["patch_size"], "spatial_merge_size": params["image"]["merge_size"]}
    return params["profile"], LMShape.from_hf(text), ViTShape.from_hf(vision, llm["hidden_size"])


def training_setup(params: dict, stage: str, gpus: int) -> TrainingSetup:
    """Global batch (micro-batch × accumulation × data-parallel ranks on ``gpus``), steps and what trains."""
    train = params["train"]
    common, own = train["common"], train[stage]
    model_parallel = int(common.get("tp", 1)) * int(common.get("pp", 1))
    if gpus % model_parallel:
        raise ValueError(f"{gpus} GPUs do not divide into tp x pp = {model_parallel} model-parallel groups")
    dp = gpus // model_parallel
    return TrainingSetup(global_batch=int(common["micro_batch"]) * int(own["grad_accum"]) * dp,
                         steps=int(own["steps"]), trainable=own["trainable"])


def built_stage_data(root: Path, params: dict, stage: str) -> StageData | None:
    """Counts measured on the built ``pack@<stage>`` and ``lengths`` artifacts; None if they are not built."""
    pack_dir, lengths_dir = root / "artifacts" / f"pack_{stage}", root / "artifacts" / "lengths"
    if not (pack_dir / "artifact.json").exists() or not (lengths_dir / "artifact.json").exists():
        return None
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from llava_ov.artifacts import open_artifact

    pack, lengths = open_artifact(pack_dir, "pack", 2), open_artifact(lengths_dir, "lengths", 2)
    plan = pq.read_table(pack / "plan.parquet", columns=["pack", "sample_id"])
    table = pq.read_table(lengths / "lengths.parquet", columns=["sample_id", "text_tokens", "image_tokens"])
    table = table.filter(pc.is_in(table["sample_id"], plan["sample_id"]))
    samples = plan.num_rows
    if samples == 0 or table.num_rows != samples:
        raise ValueError(f"{pack_dir}: {samples} packed samples but {table.num_rows} of them in {lengths_dir}; "
                         "rebuild (dvc repro)")
    text, image = (pc.sum(table[c]).as_py() for c in ("text_tokens", "image_tokens"))
    capacity = int(pack.stats["capacity"])
    packs = len(pc.unique(plan["pack"]))
    return StageData(stage=stage, samples=samples, text_tokens=text / samples, image_tokens=image / samples,
                     seq_len=capacity, fill=(text + image) / (packs * capacity),
                     origin=pack_dir.relative_to(root).as_posix())
