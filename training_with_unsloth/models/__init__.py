"""Model backends: Unsloth QLoRA on a CUDA GPU, transformers + PEFT elsewhere, the embedded model."""
