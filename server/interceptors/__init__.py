"""gRPC server interceptors: the one place every RPC passes (auth today; rate limits and
metrics next)."""
