"""LLaVA-OV-1.5 on megatron-core: model, HF <-> Megatron conversion, CPU compatibility layer."""
