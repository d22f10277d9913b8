"""DVC stage `tokenizer`: train the byte-level BPE on the corpora (tiny) or import Qwen3's (4b/8b)."""

from pathlib import Path

from llava_ov.data.reader import iter_samples
from llava_ov.stage import stage_run
from llava_ov.text.template import PLACEHOLDER
from llava_ov.text.tokenizer import import_qwen, special_ids, train_bpe


def main() -> None:
    with stage_run("tokenizer") as run:
        cfg = run.params["tokenizer"]
        with run.writer(params={"tokenizer": cfg}) as w:
            if cfg["source"] == "train":
                ingest = run.open("ingest")
                w.inputs = {"ingest": ingest}
                texts = [m["content"].replace(PLACEHOLDER, "") for _, meta, _ in
                         iter_samples(ingest, tuple(cfg["pools"])) for m in meta["messages"]]
                tok = train_bpe(texts, cfg["vocab_size"])
                tok.save_pretrained(w.dir)
            else:
                tok = import_qwen(Path(cfg["source"]), w.dir)
            w.stats.update(vocab_size=len(tok), special_ids=special_ids(tok))
        run.metrics["vocab_size"] = len(tok)


if __name__ == "__main__":
    main()
