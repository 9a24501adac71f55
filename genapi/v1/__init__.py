"""Generated gRPC stubs (genapi.v1 *_pb2*.py) land here; build.sh generates them."""
