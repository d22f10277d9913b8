"""DVC stage `concept_encoder`: the image-text encoder and the concept vocabulary, with held-out recall@5."""

from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer

from llava_ov.artifacts import digest_dir
from llava_ov.concepts.concept_matrix import concept_matrix
from llava_ov.concepts.corpus import read_corpus
from llava_ov.concepts.encoder import ImageTextEncoder, new_encoder, train_encoder
from llava_ov.concepts.recall import recall_at_5, recall_sample
from llava_ov.concepts.vocabulary import build_vocabulary, read_vocabulary
from llava_ov.stage import stage_run

CACHE = Path("cache/concept_vocabulary")


def main() -> None:
    with stage_run("concept_encoder") as run:
        cfg, seed = run.params["concepts"], run.params["seed"]
        enc_cfg, voc_cfg = cfg["encoder"], cfg["vocabulary"]
        torch.set_num_threads(2)
        ingest, tokenizer_art = run.open("ingest"), run.open("tokenizer")
        pools, permille = tuple(enc_cfg["pools"]), enc_cfg["held_out_permille"]
        picks = recall_sample(ingest / "index.parquet", pools, permille, enc_cfg["recall_sample"], seed)
        train = enc_cfg["source"] == "train"
        if train:
            encoder = new_encoder(AutoTokenizer.from_pretrained(tokenizer_art.path), enc_cfg, seed)
        else:
            encoder = ImageTextEncoder.load(enc_cfg["source"], "cuda" if torch.cuda.is_available() else "cpu")
        corpus = read_corpus(ingest, pools, permille, picks, encoder.pixels if train else None,
                             words=voc_cfg["source"] == "wordnet")
        vocab = (build_vocabulary(corpus.words, voc_cfg["wordnet_limit"]) if voc_cfg["source"] == "wordnet"
                 else read_vocabulary(Path(voc_cfg["source"])))
        if train:
            metrics = train_encoder(encoder, torch.stack(corpus.pixels), corpus.captions, enc_cfg, seed)
            metrics["train_unreadable"] = corpus.unreadable
        else:
            metrics = {"imported": enc_cfg["source"]}
        with run.writer(params={"concepts": cfg}, inputs={"ingest": ingest, "tokenizer": tokenizer_art}) as w:
            encoder.save(w.dir / "encoder")
            concepts, reused = concept_matrix(encoder, digest_dir(w.dir / "encoder"), vocab,
                                              enc_cfg["concept_prompt"], CACHE)
            recall = recall_at_5(encoder, corpus.recall_pairs, vocab, concepts)
            (w.dir / "vocabulary.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
            np.save(w.dir / "concept_embeddings.npy", concepts)
            w.stats.update(vocabulary=len(vocab), **recall)
        run.metrics.update(metrics, vocabulary=len(vocab), **recall, vocabulary_reused=reused)


if __name__ == "__main__":
    main()
