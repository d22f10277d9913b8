"""DVC stage `vit_base`: pretrain the tiny RICE ViT (tiny) or import RICE-ViT-L/14-560 from a folder (4b/8b)."""

import torch

from llava_ov.artifacts import ArtifactWriter, write_json
from llava_ov.base.sources import import_vit
from llava_ov.base.vit_pretrain import pretrain_vit
from llava_ov.data.reader import iter_samples, open_ingest
from llava_ov.params import section
from llava_ov.vision.image_processing import ImageProcessor

KIND, SCHEMA = "vit", 1


def main() -> None:
    cfg, image, seed = section("vit_base"), section("image"), section("seed")
    torch.set_num_threads(cfg.get("threads", 2))
    run_params = {"vit_base": cfg, "image": image, "seed": seed}
    with ArtifactWriter("artifacts/vit_base", KIND, SCHEMA, params=run_params) as w:
        if cfg["source"] == "pretrain":
            ingest = open_ingest()
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
    write_json("metrics/vit_base.json", metrics | w.stats)
    print(f"vit_base: {metrics}")


if __name__ == "__main__":
    main()
