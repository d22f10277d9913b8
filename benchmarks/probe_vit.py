"""What a checkpoint's ViT encodes: linear probes for shape and colour on easy-vqa images.

For each Hugging Face checkpoint folder given (``artifacts/stage0``, ``artifacts/train_<stage>``), the mean patch
token of the ViT (before the merger) is computed for easy-vqa training images whose own questions state their
shape and colour, a logistic regression is fitted on them and scored on easy-vqa *test* images. A VLM can only
answer what these features carry: this is how the tiny profile's shape gap was found (docs/training.md).

Usage: python benchmarks/probe_vit.py artifacts/stage0 artifacts/train_stage2 [--train 1500 --test 400]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import easy_vqa
import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from llava_ov.data.sources.easyvqa import colour_and_shape, questions_by_image
from llava_ov.eval.checkpoint import load_checkpoint


def labelled_images(paths: list[str], questions: tuple, limit: int) -> list[tuple[bytes, str, str]]:
    """(image bytes, shape, colour) for the first ``limit`` images whose questions state both."""
    out = []
    for image_id, qa in sorted(questions_by_image(questions).items()):
        colour, shape = colour_and_shape(qa)
        if colour and shape:
            out.append((Path(paths[image_id]).read_bytes(), shape, colour))
        if len(out) == limit:
            break
    return out


@torch.inference_mode()
def mean_patch_features(folder: str, images: list[tuple[bytes, str, str]]) -> np.ndarray:
    ckpt = load_checkpoint(folder)
    visual = ckpt.model.model.visual
    rows = []
    for data, _, _ in images:
        pixels, grid = ckpt.images(data)
        rows.append(visual.encode(torch.from_numpy(pixels), torch.tensor([grid])).mean(0).numpy())
    return np.stack(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--train", type=int, default=1500)
    ap.add_argument("--test", type=int, default=400)
    args = ap.parse_args()
    torch.set_num_threads(2)
    train = labelled_images(easy_vqa.get_train_image_paths(), easy_vqa.get_train_questions(), args.train)
    test = labelled_images(easy_vqa.get_test_image_paths(), easy_vqa.get_test_questions(), args.test)
    print(f"{len(train)} train / {len(test)} test easy-vqa images; probe accuracy on the test images")
    print(f"{'checkpoint':32s} {'shape':>6s} {'colour':>6s}")
    for folder in args.checkpoints:
        x_train, x_test = mean_patch_features(folder, train), mean_patch_features(folder, test)
        scores = []
        for column in (1, 2):
            probe = LogisticRegression(max_iter=3000).fit(x_train, [t[column] for t in train])
            scores.append(probe.score(x_test, [t[column] for t in test]))
        print(f"{folder:32s} {scores[0]:6.3f} {scores[1]:6.3f}")


if __name__ == "__main__":
    main()
