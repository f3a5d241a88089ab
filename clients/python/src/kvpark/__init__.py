"""The Python client of kvpark: generated stubs (`kvpark.v1`, `kvpark.grpc_health.v1`) and two clients,
`KvparkClient` (blocking) and `AsyncKvparkClient` (asyncio), with a bearer token, deadlines, retries of
UNAVAILABLE and RESOURCE_EXHAUSTED with backoff, and TLS."""
from kvpark._options import RETRY_CODES, RetryEvent, Tls
from kvpark.aio import AsyncKvparkClient
from kvpark.client import KvparkClient

__all__ = ["AsyncKvparkClient", "KvparkClient", "RETRY_CODES", "RetryEvent", "Tls"]
__version__ = "0.1.0"
