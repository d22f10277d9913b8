"""Pretrain a tiny RICE-style ViT (transformers ``MLCDVisionModel``, the source layout of RICE-ViT).

MLCD/RICE learn by cluster discrimination: images are assigned to clusters and the encoder is trained to
classify its own image into its cluster. Here the clusters are the distinct captions of the alignment pool
(images that share a caption — "A yellow circle." — share a cluster), discriminated through the CLS token
after ``post_layernorm``, as in MLCD. The result is saved with ``save_pretrained`` in the MLCD layout
(separate q/k/v, ``vision_model.*``), so stage0 does the real rename-and-fuse.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import MLCDVisionConfig, MLCDVisionModel

from llava_ov.vision.image_processing import ImageProcessor


def image_tensor(processor: ImageProcessor, data: bytes, side: int) -> torch.Tensor:
    """One image resized to ``side``×``side`` and normalised like the processor does: [3, side, side]."""
    fixed = ImageProcessor(processor.patch_size, processor.merge_size, side * side, side * side,
                           processor.image_mean, processor.image_std)
    pixels, (_, gh, gw) = fixed(data)
    p, m = processor.patch_size, processor.merge_size
    x = torch.from_numpy(pixels).view(gh // m, gw // m, m, m, 3, p, p)
    return x.permute(4, 0, 2, 5, 1, 3, 6).reshape(3, gh * p, gw * p)


def pretrain_vit(images: list[bytes], captions: list[str], cfg: dict, processor: ImageProcessor,
                 seed: int) -> tuple[MLCDVisionModel, dict]:
    """Train the ViT to discriminate caption clusters; returns the model and training figures."""
    torch.manual_seed(seed)
    classes = {c: i for i, c in enumerate(sorted(set(captions)))}
    labels = torch.tensor([classes[c] for c in captions])
    side = cfg["image_side"]
    x = torch.stack([image_tensor(processor, img, side) for img in tqdm(images, desc="vit_base images")])
    config = MLCDVisionConfig(hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
                              num_hidden_layers=cfg["num_hidden_layers"],
                              num_attention_heads=cfg["num_attention_heads"], patch_size=processor.patch_size,
                              image_size=side, hidden_act="gelu", layer_norm_eps=1e-5)
    model = MLCDVisionModel(config)
    head = torch.nn.Linear(cfg["hidden_size"], len(classes))
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=0.05)
    steps = cfg["epochs"] * (len(x) // cfg["batch_size"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg["lr"], total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    t0, losses, correct = time.perf_counter(), [], []
    model.train()
    with tqdm(total=steps, desc="vit_base") as bar:
        for _ in range(cfg["epochs"]):
            order = torch.randperm(len(x), generator=gen)
            for i in range(len(x) // cfg["batch_size"]):
                idx = order[i * cfg["batch_size"]:(i + 1) * cfg["batch_size"]]
                logits = head(model(pixel_values=x[idx]).pooler_output)
                loss = F.cross_entropy(logits, labels[idx])
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                losses.append(loss.item())
                correct.append((logits.argmax(-1) == labels[idx]).float().mean().item())
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}")
    tail = max(1, len(losses) // 10)
    return model.eval(), {"steps": steps, "classes": len(classes), "first_loss": round(losses[0], 4),
                          "final_loss": round(float(np.mean(losses[-tail:])), 4),
                          "final_train_accuracy": round(float(np.mean(correct[-tail:])), 4),
                          "seconds": round(time.perf_counter() - t0, 2)}
