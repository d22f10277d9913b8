"""DVC stage `vit_base`: pretrain the tiny RICE ViT (tiny) or import RICE-ViT-L/14-560 from a folder (4b/8b)."""

import torch

from llava_ov.base.sources import import_vit
from llava_ov.base.vit_pretrain import pretrain_vit
from llava_ov.data.reader import iter_samples
from llava_ov.stage import stage_run
from llava_ov.vision.image_processing import ImageProcessor


def main() -> None:
    with stage_run("vit_base") as run:
        cfg, image, seed = run.params["vit_base"], run.params["image"], run.params["seed"]
        torch.set_num_threads(cfg.get("threads", 2))
        with run.writer(params={"vit_base": cfg, "image": image, "seed": seed}) as w:
            if cfg["source"] == "pretrain":
                ingest = run.open("ingest")
                w.inputs = {"ingest": ingest}
                pairs = [(images[0], meta["messages"][-1]["content"])
                         for _, meta, images in iter_samples(ingest, ("align",))]
                model, metrics = pretrain_vit([p[0] for p in pairs], [p[1] for p in pairs], cfg,
                                              ImageProcessor(**image), seed)
            else:
                model = import_vit(cfg["source"], cfg["size"])
                metrics = {"imported": cfg["source"], "size": cfg["size"]}
            model.save_pretrained(w.dir)
            w.stats.update(parameters=sum(p.numel() for p in model.parameters()))
        run.metrics.update(metrics, **w.stats)


if __name__ == "__main__":
    main()
