"""A miniature project for training tests: a tiny stage0 HF folder and small pack artifacts, built in seconds.

Everything goes through the real code paths (BPE tokenizer training, the lengths, plan and packed-shard code,
ArtifactWriter), only scaled down: a 2-layer ViT and LM, 56 px images, 160-token packs.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from llava_ov.artifacts import ArtifactWriter
from llava_ov.model import LlavaOV15ForConditionalGeneration
from llava_ov.model.family import build_config
from llava_ov.text.tokenizer import special_ids, train_bpe
from llava_ov.vision.image_processing import ImageProcessor
from tests.pack_fixtures import make_packs, measure, write_ingest, write_tokenizer

REPO = Path(__file__).resolve().parents[1]
COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220), "yellow": (230, 220, 30)}
SHAPES = ("circle", "square")
IMAGE = {"patch_size": 14, "merge_size": 2, "min_pixels": 3136, "max_pixels": 3136}
CAPACITY = 160


def train_params(**stage_overrides) -> dict:
    common = {"nproc": 1, "tp": 1, "pp": 1, "cp": 1, "threads": 1, "dtype": "fp32", "recompute": "none",
              "sequence_parallel": False, "overlap_grad_reduce": False, "overlap_param_gather": False,
              "micro_batch": 2, "save_every": 2, "logit_tolerance": 1e-3, "beta1": 0.9, "eps": 1e-5,
              "clip_grad": 1.0, "min_lr": 1e-6, "warmup_fraction": 0.1}
    stage1 = {"trainable": "merger", "steps": 6, "lr": 3e-3, "weight_decay": 0.0, "beta2": 0.99, "grad_accum": 1}
    stage2 = {"trainable": "all", "steps": 6, "lr": 3e-3, "weight_decay": 0.0, "beta2": 0.99, "grad_accum": 1}
    return {"common": common, "nnodes": {"stage1": 1, "stage1_5": 1, "stage2": 1},
            "stage1": {**stage1, **stage_overrides}, "stage1_5": dict(stage2), "stage2": stage2}


def _image(color: str, shape: str) -> bytes:
    img = Image.new("RGB", (56, 56), (255, 255, 255))
    px = np.asarray(img).copy()
    yy, xx = np.mgrid[:56, :56]
    inside = ((yy - 28) ** 2 + (xx - 28) ** 2 < 400) if shape == "circle" else ((abs(yy - 28) < 18) & (abs(xx - 28) < 18))
    px[inside] = COLORS[color]
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format="PNG")
    return buf.getvalue()


def _samples() -> list[tuple[str, dict, list[bytes]]]:
    out = []
    for i, (color, shape) in enumerate((c, s) for c in COLORS for s in SHAPES for _ in range(3)):
        messages = [{"role": "user", "content": "<image>\nWhat color is the shape?"},
                    {"role": "assistant", "content": color}]
        out.append((f"s{i:03d}", {"messages": messages}, [_image(color, shape)]))
    return out


def build(root: Path, **stage_overrides) -> Path:
    """Write params.yaml, dvc.yaml, artifacts/stage0 and artifacts/pack_{stage1,stage1_5,stage2} under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / "params.yaml").write_text(yaml.safe_dump({"seed": 0, "image": IMAGE, "train": train_params(**stage_overrides)}))
    samples = _samples()
    texts = [m["content"] for _, meta, _ in samples for m in meta["messages"]] + ["You are a helpful assistant."]
    tokenizer = train_bpe(texts * 4, vocab_size=320)
    ids = special_ids(tokenizer)
    torch.manual_seed(0)
    config = build_config(
        "tiny", vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
        text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, vocab_size=len(tokenizer)),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    processor = ImageProcessor(**IMAGE)
    with ArtifactWriter(root / "artifacts" / "stage0", "hf_model", 1) as w:
        LlavaOV15ForConditionalGeneration(config).save_pretrained(w.dir)
        tokenizer.save_pretrained(w.dir)
        processor.save(w.dir)
    scratch = root / "build"  # ingest, tokenizer, lengths and caches the packs are built from
    ingest = write_ingest(scratch, samples)
    tok = write_tokenizer(scratch, tokenizer)
    lengths = measure(scratch, ingest, tok, IMAGE)
    for stage in ("stage1", "stage1_5", "stage2"):
        make_packs(root / "artifacts", ingest, tok, lengths, IMAGE, CAPACITY, 1 << 30, name=f"pack_{stage}",
                   cache=scratch / "cache" / "pack_shards")
    return root


def stage_env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore")
    for name in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


INIT = {"stage1": "stage0", "stage1_5": "train_stage1", "stage2": "train_stage1_5"}  # as dvc.yaml chains them


def stage_command(stage: str = "stage1") -> list[str]:
    """The train stage's command as ``dvc.yaml`` gives it (its inputs and outputs on the command line)."""
    return [sys.executable, "-m", "stages.train", stage, "--in", f"init=artifacts/{INIT[stage]}",
            "--in", f"packs=artifacts/pack_{stage}", "--out", f"artifacts/train_{stage}",
            "--metrics", f"metrics/train_{stage}.json"]


def run_stage(root: Path, stage: str = "stage1", timeout: float = 240) -> subprocess.CompletedProcess:
    """The train stage in ``root`` (a fresh interpreter, as DVC runs it)."""
    return subprocess.run(stage_command(stage), cwd=root, env=stage_env(),
                          capture_output=True, text=True, timeout=timeout)
