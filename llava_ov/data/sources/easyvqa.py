"""easy-vqa (MIT): 64x64 images of one coloured shape with templated questions, with its official split.

The training images feed ``align``/``mid`` (captions built from the dataset's own colour and shape answers) and
``instruct`` (its questions, grouped into multi-turn conversations); the official TEST split feeds only ``eval``.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterator

import easy_vqa
import numpy as np

from llava_ov.data.sources import Candidate, record, take

SOURCE = "easyvqa"
SHAPES = ("circle", "rectangle", "triangle")


def questions_by_image(questions: tuple[list, list, list]) -> dict[int, list[tuple[str, str]]]:
    grouped: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for q, a, image_id in zip(*questions):
        grouped[int(image_id)].append((q, a))
    return grouped


def colour_and_shape(qa: list[tuple[str, str]]) -> tuple[str | None, str | None]:
    colour = shape = None
    for q, a in qa:
        if q.startswith("what color"):
            colour = a
        elif a in SHAPES and q.startswith(("what shape", "what is the")):
            shape = a
    return colour, shape


def answer_choices(answer: str, all_answers: list[str]) -> list[str]:
    """Candidates of the same kind as the answer (yes/no, shapes, or colours)."""
    if answer in ("yes", "no"):
        return ["no", "yes"]
    if answer in SHAPES:
        return sorted(SHAPES)
    return sorted(a for a in all_answers if a not in SHAPES and a not in ("yes", "no"))


def generate(sizes: dict[str, int], rng: np.random.Generator) -> Iterator[Candidate]:
    answers = list(easy_vqa.get_answers())
    train_paths = easy_vqa.get_train_image_paths()
    train_qa = questions_by_image(easy_vqa.get_train_questions())
    ids = sorted(train_qa)
    # Captions only for images whose own questions state both colour and shape (otherwise it would be a guess).
    known = {i: colour_and_shape(train_qa[i]) for i in ids}
    captionable = [i for i in ids if None not in known[i]]
    chosen = take(captionable, sizes, ("align", "mid"), rng)
    for pool in ("align", "mid"):
        for image_id in chosen[pool]:
            colour, shape = known[image_id]
            yield record(SOURCE, pool, "caption", [Path(train_paths[image_id]).read_bytes()],
                         caption=f"A {colour} {shape}.",
                         description=f"A simple drawing of a single {colour} {shape} on a plain light background. "
                                     f"There is exactly one shape in the image, and it is {colour}.")
    # instruct: every training image's questions, a few turns per conversation, images reused across chunks.
    conversations = []
    for image_id in ids:
        qa = train_qa[image_id]
        order = rng.permutation(len(qa))
        for start in range(0, len(qa), 3):
            conversations.append((image_id, [qa[i] for i in order[start:start + 3]]))
    for image_id, pairs in take(conversations, sizes, ("instruct",), rng)["instruct"]:
        yield record(SOURCE, "instruct", "general_vqa", [Path(train_paths[image_id]).read_bytes()], qa=pairs)
    test_paths = easy_vqa.get_test_image_paths()
    test = list(zip(*easy_vqa.get_test_questions()))
    for q, a, image_id in take(test, sizes, ("eval",), rng)["eval"]:
        yield record(SOURCE, "eval", "general_vqa", [Path(test_paths[int(image_id)]).read_bytes()], question=q,
                     answer=a, choices=answer_choices(a, answers))
