"""The instructions of the embedded corpora's caption pools, and the captions an eval answer alone fixes.

Every source asks for its ``align`` caption and its ``mid`` description with the same instruction. Two eval tasks
score exactly those training texts on held-out images (``caption`` and ``description`` loss: the quantity Stage-1
and Stage-1.5 minimise), so they must use the very strings the sources wrote. Both read them from here: the sources
through :func:`llava_ov.data.sources.record`, the task specs (``prompt: {pool: align}``, ``target: {pool: align}``)
through :func:`llava_ov.eval.tasks.load_spec`. This module imports nothing, so the evaluator's code digest does not
pull in the sources' image renderers.
"""

from __future__ import annotations

POOL_PROMPTS = {
    "align": "Give a short caption.",
    "mid": "Describe the image in detail.",
}

# Per pool and source, the caption/description as a template over the source's eval answer, for the sources whose
# text the answer alone determines (a digit's label, an emoji's name, a printed word).
POOL_TEMPLATES = {
    "align": {
        "digits": "A handwritten digit {answer}.",
        "emoji": "A {answer} emoji.",
        "ocr": 'The word "{answer}".',
    },
    "mid": {
        "digits": "A low-resolution scan of the handwritten digit {answer}, dark ink on a white background, "
                  "enlarged from 8 by 8 pixels.",
    },
}


def with_image(text: str) -> str:
    """The content of a conversation's first user turn: the image placeholder (``llava_ov.text.template``, which
    this module does not import: ingest must not depend on the tokenizer), then ``text``."""
    return f"<image>\n{text}"
