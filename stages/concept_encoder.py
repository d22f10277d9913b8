"""DVC stage `concept_encoder`: the image-text encoder and the concept vocabulary, with held-out recall@5."""

import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer

from llava_ov.artifacts import ArtifactWriter, open_artifact, write_json
from llava_ov.concepts.encoder import ImageTextEncoder, train_encoder
from llava_ov.concepts.index import streaming_topk
from llava_ov.concepts.vocabulary import build_vocabulary, caption_concepts, read_vocabulary
from llava_ov.data.reader import iter_samples, open_ingest
from llava_ov.params import load_params

KIND, SCHEMA = "concept_encoder", 1


def main() -> None:
    params = load_params()
    cfg = params["concepts"]
    enc_cfg, voc_cfg = cfg["encoder"], cfg["vocabulary"]
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    ingest = open_ingest()
    tokenizer_art = open_artifact("artifacts/tokenizer", "tokenizer", 1)
    pairs = [(row["sample_id"], images[0], meta["messages"][-1]["content"])
             for row, meta, images in iter_samples(ingest, tuple(enc_cfg["pools"]))]
    held = np.array([int(sid, 16) % 1000 < enc_cfg["held_out_permille"] for sid, _, _ in pairs])
    train = [p for p, h in zip(pairs, held) if not h]
    test = [p for p, h in zip(pairs, held) if h]
    vocab = (build_vocabulary((c for _, _, c in pairs), voc_cfg["wordnet_limit"]) if voc_cfg["source"] == "wordnet"
             else read_vocabulary(Path(voc_cfg["source"])))
    if enc_cfg["source"] == "train":
        encoder, metrics = train_encoder([p[1] for p in train], [p[2] for p in train],
                                         AutoTokenizer.from_pretrained(tokenizer_art.path), enc_cfg, params["seed"])
    else:
        encoder, metrics = ImageTextEncoder.load(enc_cfg["source"]), {"imported": enc_cfg["source"]}
    # recall@5: a held-out image's top-5 vocabulary entries include a concept named in its own caption
    vocab_ids = {v: i for i, v in enumerate(vocab)}
    concept_emb = encoder.embed_texts([enc_cfg["concept_prompt"].format(c) for c in vocab])
    scored = [(img, caption_concepts(cap, vocab_ids)) for _, img, cap in test]
    scored = [(img, c) for img, c in scored if c]
    top5, _ = streaming_topk(encoder.embed_images([img for img, _ in scored]), concept_emb, 5)
    recall = float(np.mean([bool(set(row.tolist()) & c) for row, (_, c) in zip(top5, scored)]))
    with ArtifactWriter("artifacts/concept_encoder", KIND, SCHEMA, params={"concepts": cfg},
                        inputs={"ingest": ingest, "tokenizer": tokenizer_art}) as w:
        encoder.save(w.dir / "encoder")
        (w.dir / "vocabulary.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        np.save(w.dir / "concept_embeddings.npy", concept_emb.astype(np.float16))
        w.stats.update(vocabulary=len(vocab), recall_at_5=round(recall, 4), held_out=len(scored))
    metrics |= {"vocabulary": len(vocab), "recall_at_5": round(recall, 4), "held_out": len(scored),
                "seconds": round(time.perf_counter() - t0, 2)}
    write_json("metrics/concept_encoder.json", metrics)
    print(f"concept_encoder: {metrics}")


if __name__ == "__main__":
    main()
