"""Build-time generators (tiny checkpoints for the embedded defaults, benchmarks and
tests). Never imported by the running server."""
