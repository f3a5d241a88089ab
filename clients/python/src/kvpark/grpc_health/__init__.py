"""Generated stubs of grpc.health.v1, kept inside the kvpark package so as not to shadow grpcio."""
