"""DVC stage `stage0`: merge ViT + LLM + a fresh merger into a Hugging Face folder, gated by two checks."""

import torch
from transformers import AutoTokenizer

from llava_ov.base.merge import check_llm, check_vit, merge
from llava_ov.model.family import family
from llava_ov.stage import stage_run
from llava_ov.text.tokenizer import special_ids
from llava_ov.vision.image_processing import ImageProcessor


def main() -> None:
    with stage_run("stage0") as run:
        cfg, image, seed = run.params["stage0"], run.params["image"], run.params["seed"]
        arts = {name: run.open(name) for name in ("vit_base", "llm_base", "tokenizer")}
        vit = family().vit_class.from_pretrained(arts["vit_base"].path).eval()
        llm = family().llm_class.from_pretrained(arts["llm_base"].path).eval()
        tokenizer = AutoTokenizer.from_pretrained(arts["tokenizer"].path)
        ids = special_ids(tokenizer)
        token_ids = {"image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
                     "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
                     "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"]}
        model = merge(vit, llm, token_ids, seed, image["merge_size"])
        gen = torch.Generator().manual_seed(seed)
        side = vit.config.image_size
        vit_diff = check_vit(vit, model, torch.randn(2, 3, side, side, generator=gen), image["merge_size"])
        llm_diff = check_llm(llm, model, torch.randint(0, llm.config.vocab_size, (2, 32), generator=gen))
        checks = {"vit_max_abs_diff": vit_diff, "llm_max_abs_diff": llm_diff, "tolerance": cfg["tolerance"]}
        failed = [name for name, diff in [("ViT", vit_diff), ("LLM", llm_diff)] if not diff <= cfg["tolerance"]]
        if failed:
            raise RuntimeError(f"stage0 merge check failed for {failed}: {checks}; the merged weights do not "
                               f"reproduce the source models")
        with run.writer(params={"stage0": cfg, "image": image, "seed": seed}, inputs=arts) as w:
            model.generation_config.eos_token_id = ids["<|im_end|>"]
            model.generation_config.pad_token_id = ids["<|endoftext|>"]
            model.save_pretrained(w.dir)
            tokenizer.save_pretrained(w.dir)
            ImageProcessor(**image).save(w.dir)
            w.stats.update(parameters=sum(p.numel() for p in model.parameters()), checks=checks)
        run.metrics.update(checks)


if __name__ == "__main__":
    main()
