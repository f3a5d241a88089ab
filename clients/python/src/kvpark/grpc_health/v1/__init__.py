"""Generated message classes and gRPC stubs of grpc.health.v1 (clients/python/generate_stubs.sh)."""
