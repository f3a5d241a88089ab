"""Generated message classes and gRPC stubs of kvpark.v1 (clients/python/generate_stubs.sh)."""
