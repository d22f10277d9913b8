"""Pretrain a tiny RICE-style ViT (transformers ``MLCDVisionModel``, the source layout of RICE-ViT).

MLCD (multi-label cluster discrimination) assigns every image to *several* clusters and trains the encoder to
score all of them above every other cluster; RICE adds the same discrimination for regions. Here an image's
clusters are the content words of its alignment caption ("A yellow circle." → {yellow, circle}), so a cluster
is shared by every image that shows that colour, shape, digit or object, instead of one class per distinct
caption (which, with one emoji name per image, left each class a handful of images and taught the tiny ViT
little). Two views are discriminated with one cluster head: the CLS token after ``post_layernorm`` (MLCD) and
the mean of the final patch tokens (the region signal of RICE). The second matters downstream: the VLM drops
the CLS and feeds the patch tokens to the merger, and with a CLS objective alone the last layer's patch outputs
get no gradient at all. The result is saved with ``save_pretrained`` in the MLCD layout (separate q/k/v,
``vision_model.*``), so stage0 does the real rename-and-fuse.
"""

from __future__ import annotations

import re
import time
from collections import Counter

import numpy as np
import torch
from tqdm import tqdm
from transformers import MLCDVisionConfig, MLCDVisionModel

from llava_ov.optim import OneCycleAdamW
from llava_ov.vision.image_processing import ImageProcessor

MAX_CLUSTER_SHARE = 0.5  # a word in more captions than this ("a", ...) names no visual cluster


def image_tensor(processor: ImageProcessor, data: bytes, side: int) -> torch.Tensor:
    """One image resized to ``side``×``side`` and normalised like the processor does: [3, side, side]."""
    fixed = ImageProcessor(processor.patch_size, processor.merge_size, side * side, side * side,
                           processor.image_mean, processor.image_std)
    pixels, (_, gh, gw) = fixed(data)
    p, m = processor.patch_size, processor.merge_size
    x = torch.from_numpy(pixels).view(gh // m, gw // m, m, m, 3, p, p)
    return x.permute(4, 0, 2, 5, 1, 3, 6).reshape(3, gh * p, gw * p)


def caption_clusters(captions: list[str]) -> tuple[list[str], torch.Tensor]:
    """(cluster names, multi-hot [n_captions, n_clusters]): the content words of each caption.

    A word becomes a cluster when at least two captions use it and at most ``MAX_CLUSTER_SHARE`` of them do;
    a caption with none of them keeps its own whole text as a cluster, so every image has a positive.
    """
    words = [sorted(set(re.findall(r"[a-z0-9]+", c.lower()))) for c in captions]
    counts = Counter(w for ws in words for w in ws)
    limit = MAX_CLUSTER_SHARE * len(captions)
    kept = [[w for w in ws if 2 <= counts[w] <= limit] or [c] for ws, c in zip(words, captions)]
    names = sorted({w for ws in kept for w in ws})
    index = {w: i for i, w in enumerate(names)}
    targets = torch.zeros(len(captions), len(names))
    for row, ws in enumerate(kept):
        targets[row, [index[w] for w in ws]] = 1.0
    return names, targets


def multi_label_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """MLCD's loss: log(1 + Σ_neg e^{s}) + log(1 + Σ_pos e^{-s}), averaged over the batch."""
    neg = logits.masked_fill(targets.bool(), float("-inf"))
    pos = (-logits).masked_fill(~targets.bool(), float("-inf"))
    zero = logits.new_zeros(len(logits), 1)
    return (torch.logsumexp(torch.cat([zero, neg], 1), 1) + torch.logsumexp(torch.cat([zero, pos], 1), 1)).mean()


def pretrain_vit(images: list[bytes], captions: list[str], cfg: dict, processor: ImageProcessor,
                 seed: int) -> tuple[MLCDVisionModel, dict]:
    """Train the ViT to discriminate its caption clusters; returns the model and training figures."""
    torch.manual_seed(seed)
    names, targets = caption_clusters(captions)
    side = cfg["image_side"]
    x = torch.stack([image_tensor(processor, img, side) for img in tqdm(images, desc="vit_base images")])
    config = MLCDVisionConfig(hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
                              num_hidden_layers=cfg["num_hidden_layers"],
                              num_attention_heads=cfg["num_attention_heads"], patch_size=processor.patch_size,
                              image_size=side, hidden_act="gelu", layer_norm_eps=1e-5)
    model = MLCDVisionModel(config)
    head = torch.nn.Linear(cfg["hidden_size"], len(names))
    steps = cfg["epochs"] * (len(x) // cfg["batch_size"])
    opt = OneCycleAdamW([*model.parameters(), *head.parameters()], cfg["lr"], steps, pct_start=0.1,
                        weight_decay=0.05, clip_grad=1.0)
    gen = torch.Generator().manual_seed(seed)
    t0, hits = time.perf_counter(), []
    model.train()
    with tqdm(total=steps, desc="vit_base") as bar:
        for _ in range(cfg["epochs"]):
            order = torch.randperm(len(x), generator=gen)
            for i in range(len(x) // cfg["batch_size"]):
                idx = order[i * cfg["batch_size"]:(i + 1) * cfg["batch_size"]]
                out = model(pixel_values=x[idx])
                regions = model.post_layernorm(out.last_hidden_state[:, 1:].mean(1))
                logits, region_logits = head(out.pooler_output), head(regions)
                loss = opt.step(multi_label_loss(logits, targets[idx]) + multi_label_loss(region_logits, targets[idx]))
                # top-1 cluster is one of the image's own: the discrimination the merger will build on
                hits.append(targets[idx].gather(1, region_logits.argmax(-1, keepdim=True)).mean().item())
                bar.update()
                bar.set_postfix(loss=f"{loss:.3f}")
    tail = max(1, len(hits) // 10)
    return model.eval(), {"steps": steps, "clusters": len(names), **opt.loss_summary(),
                          "final_top1_in_clusters": round(float(np.mean(hits[-tail:])), 4),
                          "seconds": round(time.perf_counter() - t0, 2)}
