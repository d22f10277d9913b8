"""Three-stage training on megatron-core: stage policies, packed micro-batches, checkpoints, HF export."""
