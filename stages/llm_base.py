"""DVC stage `llm_base`: pretrain the tiny Qwen3 (tiny) or import Qwen3-4B/8B from a local folder (4b/8b)."""

import torch
from transformers import AutoTokenizer

from llava_ov.base.llm_pretrain import pretrain_llm
from llava_ov.base.sources import import_llm
from llava_ov.data.reader import iter_samples
from llava_ov.stage import stage_run
from llava_ov.text.template import PLACEHOLDER, ChatEncoder


def main() -> None:
    with stage_run("llm_base") as run:
        cfg, seed = run.params["llm_base"], run.params["seed"]
        torch.set_num_threads(cfg.get("threads", 2))
        tokenizer_art = run.open("tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_art.path)
        with run.writer(params={"llm_base": cfg, "seed": seed}, inputs={"tokenizer": tokenizer_art}) as w:
            if cfg["source"] == "pretrain":
                ingest = run.open("ingest")
                w.inputs = {"tokenizer": tokenizer_art, "ingest": ingest}
                encoder = ChatEncoder(tokenizer)
                documents = [encoder.encode([{"role": m["role"],
                                              "content": m["content"].replace(PLACEHOLDER, "").strip()}
                                             for m in meta["messages"]], [])[0].tolist()
                             for _, meta, _ in iter_samples(ingest, tuple(cfg["pools"]))]
                model, metrics = pretrain_llm(tokenizer, documents, cfg, seed)
            else:
                model = import_llm(cfg["source"], cfg["size"], len(tokenizer))
                metrics = {"imported": cfg["source"], "size": cfg["size"]}
            model.save_pretrained(w.dir)
            w.stats.update(parameters=sum(p.numel() for p in model.parameters()))
        run.metrics.update(metrics, **w.stats)


if __name__ == "__main__":
    main()
