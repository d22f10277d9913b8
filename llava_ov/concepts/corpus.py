"""One streaming pass over the encoder's pools: training pixels, vocabulary words, the recall sample's pairs.

Today's small default trains its encoder, so it needs every non-held-out image as pixels (the training set, which
the default's ~10K images at 56 px keep small) and every caption's words (the WordNet+corpus vocabulary). The 4b/8b
profiles import MetaCLIP and read their vocabulary from a file, so they need only the few thousand recall pairs and
read only the shards that hold them. Either way the pool's bytes are never held: a shard is read sample by sample.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm import tqdm

from llava_ov.artifacts import Artifact
from llava_ov.concepts.encoder import UnreadableImage
from llava_ov.concepts.pool import first_image, pool_shards, shard_rows, shard_samples
from llava_ov.concepts.recall import is_held_out
from llava_ov.concepts.vocabulary import corpus_words


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
    index = ingest / "index.parquet"
    corpus = EncoderCorpus()
    for shard in tqdm(pool_shards(index, pools), desc="concept_encoder: read pools", unit="shard"):
        rows = shard_rows(index, pools, shard, ["sample_id", "key"]).to_pydict()
        id_of = dict(zip(rows["key"], rows["sample_id"]))
        if pixels is None and not words and recall_ids.isdisjoint(rows["sample_id"]):
            continue
        for key, files in shard_samples(ingest.path / shard, set(id_of)):
            sid, image = id_of[key], first_image(files)
            caption = json.loads(files["json"])["messages"][-1]["content"]
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
