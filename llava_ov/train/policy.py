"""What a training stage trains and how: the recipe's per-stage policy, read from ``params.yaml: train``.

The published recipe (see docs/training.md): Stage-1 trains only the merger (lr 1e-4, wd 0, β2 0.99), Stage-1.5
and Stage-2 train everything (1e-5; wd 0.01/β2 0.95 and wd 0/β2 0.99); Adam β1 0.9, eps 1e-5, grad clip 1.0,
cosine decay to ``min_lr`` after a linear warmup. The tiny profile keeps the structure and scales lr/steps so a
2-core CPU learns in minutes.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

STAGES = ("stage1", "stage1_5", "stage2")
# merger: the recipe's Stage-1; all: its Stage-1.5/2; merger_llm: everything but the ViT (keeps the pretrained
# ViT's features when a tiny ViT would otherwise be retrained by a high lr, see docs/training.md)
TRAINABLE = ("merger", "merger_llm", "all")


@dataclass(frozen=True)
class Policy:
    """Everything one stage's optimisation depends on (hashed into the checkpoint identity)."""

    stage: str
    trainable: str
    steps: int
    lr: float
    weight_decay: float
    beta2: float
    micro_batch: int
    grad_accum: int
    beta1: float
    eps: float
    clip_grad: float
    min_lr: float
    warmup_fraction: float
    seed: int

    @property
    def warmup_steps(self) -> int:
        return max(1, round(self.warmup_fraction * self.steps))

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def policy(stage: str, train: dict, seed: int) -> Policy:
    """The policy of ``stage`` from the ``train`` params section (``common`` + the stage's own keys)."""
    if stage not in STAGES:
        raise ValueError(f"unknown training stage {stage!r}; expected one of {STAGES}")
    common, own = train["common"], train[stage]
    if own["trainable"] not in TRAINABLE:
        raise ValueError(f"params.yaml train.{stage}.trainable is {own['trainable']!r}; expected one of {TRAINABLE}")
    if own["steps"] < 1 or common["micro_batch"] < 1 or own["grad_accum"] < 1:
        raise ValueError(f"params.yaml train: steps, micro_batch and grad_accum must be >= 1 (stage {stage})")
    return Policy(stage=stage, trainable=own["trainable"], steps=int(own["steps"]), lr=float(own["lr"]),
                  weight_decay=float(own["weight_decay"]), beta2=float(own["beta2"]),
                  micro_batch=int(common["micro_batch"]), grad_accum=int(own["grad_accum"]),
                  beta1=float(common["beta1"]), eps=float(common["eps"]), clip_grad=float(common["clip_grad"]),
                  min_lr=float(common["min_lr"]), warmup_fraction=float(common["warmup_fraction"]), seed=int(seed))


def is_trainable(name: str, trainable: str) -> bool:
    """Whether the megatron parameter ``name`` trains under policy ``trainable`` (one of ``TRAINABLE``)."""
    if trainable == "merger_llm":
        return not name.startswith("vision.")
    return trainable == "all" or name.startswith("merger.")
