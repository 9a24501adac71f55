"""The default engine: Hugging Face checkpoints on PyTorch (CPU or CUDA)."""
