"""NVIDIA TensorRT-LLM backend: a thin adapter (`adapter`) over a pure, unit-tested
request mapping (`mapping`). tensorrt_llm itself is imported only when an engine starts."""
