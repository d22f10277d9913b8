"""DVC stage `tokenizer`: train the byte-level BPE on the corpora (tiny) or import Qwen3's (4b/8b)."""

import time
from pathlib import Path

from llava_ov.artifacts import ArtifactWriter, write_json
from llava_ov.data.reader import iter_samples, open_ingest
from llava_ov.params import load_params
from llava_ov.text.template import PLACEHOLDER
from llava_ov.text.tokenizer import import_qwen, special_ids, train_bpe

KIND, SCHEMA = "tokenizer", 1


def main() -> None:
    params = load_params()
    cfg = params["tokenizer"]
    t0 = time.perf_counter()
    with ArtifactWriter("artifacts/tokenizer", KIND, SCHEMA, params={"tokenizer": cfg}) as w:
        if cfg["source"] == "train":
            ingest = open_ingest()
            w.inputs = {"ingest": ingest}
            texts = [m["content"].replace(PLACEHOLDER, "") for _, meta, _ in
                     iter_samples(ingest, tuple(cfg["pools"])) for m in meta["messages"]]
            tok = train_bpe(texts, cfg["vocab_size"])
            tok.save_pretrained(w.dir)
        else:
            tok = import_qwen(Path(cfg["source"]), w.dir)
        w.stats.update(vocab_size=len(tok), special_ids=special_ids(tok))
    metrics = {"vocab_size": len(tok), "seconds": round(time.perf_counter() - t0, 2)}
    write_json("metrics/tokenizer.json", metrics)
    print(f"tokenizer: {metrics}")


if __name__ == "__main__":
    main()
