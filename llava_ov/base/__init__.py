"""Base models of the default profile (a tiny RICE ViT and a tiny Qwen3, pretrained in the pipeline) and the
stage-0 merge of a ViT and an LLM into one LLaVA-OV-1.5 checkpoint."""
