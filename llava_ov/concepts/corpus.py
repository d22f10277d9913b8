"""One streaming pass over the encoder's pools: training pixels, vocabulary words, the recall sample's pairs.

Today's small default trains its encoder, so it needs every non-held-out image as pixels (the training set, which
the default's ~10K images at 56 px keep small) and every caption's words (the WordNet+corpus vocabulary). The 4b/8b
profiles import MetaCLIP and read their vocabulary from a file, so they need only the few thousand recall pairs and
read only the shards that hold them. Either way the pool's bytes are never held: a shard is read sample by sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm import tqdm

from llava_ov.artifacts import Artifact
from llava_ov.concepts.encoder import UnreadableImage
from llava_ov.concepts.recall import is_held_out
from llava_ov.concepts.vocabulary import corpus_words
from llava_ov.data.reader import index_table, iter_samples, shards_of


@dataclass
class EncoderCorpus:
    pixels: list[torch.Tensor] = field(default_factory=list)  # training images (not held out), pool order
    captions: list[str] = field(default_factory=list)  # their captions
    words: set[str] = field(default_factory=set)  # content words of every caption
    recall_pairs: list[tuple[str, bytes]] = field(default_factory=list)  # (caption, image) of the recall sample
    unreadable: int = 0  # training images the processor could not read (skipped)


def read_corpus(ingest: Artifact, pools: tuple[str, ...], permille: int, recall_ids: set[str],
                pixels: Callable[[bytes], torch.Tensor] | None, words: bool) -> EncoderCorpus:
    """Stream the pools' shards in sorted order, samples in file order. ``pixels`` (training) and ``words`` need
    every shard; without them only shards holding a recall sample are read."""
    corpus = EncoderCorpus()
    for shard in tqdm(shards_of(ingest, pools), desc="concept_encoder: read pools", unit="shard"):
        if pixels is None and not words and recall_ids.isdisjoint(
                index_table(ingest, pools, ["sample_id"], shard=shard)["sample_id"].to_pylist()):
            continue
        for row, meta, images in iter_samples(ingest, pools, shards=(shard,)):
            sid, image = row["sample_id"], images[0] if images else None
            caption = meta["messages"][-1]["content"]
            if words:
                corpus.words |= corpus_words([caption])
            if sid in recall_ids:
                corpus.recall_pairs.append((caption, image))
            if pixels is not None and not is_held_out(sid, permille):
                try:
                    corpus.pixels.append(pixels(image))
                    corpus.captions.append(caption)
                except UnreadableImage:
                    corpus.unreadable += 1
    return corpus
