"""The concept matrix: every vocabulary entry embedded once by the encoder's text tower, cached by content.

MetaCLIP's ~500K entries through a ViT-H/14-sized text tower take about a minute on one GPU and most of an hour
on CPU, and every later rebuild of ``concept_encoder`` with the same encoder and vocabulary (a new recall sample,
a re-import of the same folder) would pay it again. The result is cached under ``cache/concept_vocabulary/`` keyed by
(encoder folder digest, vocabulary digest, prompt, device type, dtype, batch, code digest of this module's imports).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llava_ov.artifacts import digest_json
from llava_ov.code_digest import code_digest
from llava_ov.concepts.encoder import ImageTextEncoder
from llava_ov.file_cache import FileCache


def concept_matrix(encoder: ImageTextEncoder, encoder_digest: str, vocabulary: list[str], prompt: str,
                   cache: Path, batch: int = 1024) -> tuple[np.ndarray, bool]:
    """(unit embeddings [V, D] float16 of ``prompt.format(entry)`` per entry, whether the cache had them)."""
    key = digest_json({"encoder": encoder_digest, "vocabulary": digest_json(vocabulary), "prompt": prompt,
                       "device": encoder.device.type, "dtype": str(encoder.dtype), "batch": batch,
                       "code": code_digest(__name__)})
    files = FileCache(Path(cache), ".npy")
    hit = files.get(key)
    if hit is not None:
        return np.load(hit), True
    matrix = encoder.embed_texts([prompt.format(entry) for entry in vocabulary], batch).astype(np.float16)
    with files.writing(key) as tmp:
        np.save(tmp, matrix)
    return matrix, False
