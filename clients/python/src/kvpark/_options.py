"""What the sync and the asyncio client share: options, TLS, the retry policy and call metadata."""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable, FrozenSet, List, Optional, Sequence, Tuple, Union

import grpc

Pem = Union[bytes, str]
"""PEM text (a CA bundle, a certificate chain or a private key), as bytes or str."""

Metadata = Tuple[Tuple[str, str], ...]
MetadataList = List[Tuple[str, Union[str, bytes]]]

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_ATTEMPTS = 4
DEFAULT_BACKOFF_S = 0.2

RETRY_CODES: FrozenSet[grpc.StatusCode] = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}
)
"""Codes retried by default: the engine restarting or a connection reset (UNAVAILABLE), and a server or
tenant at its limit of generation requests in flight (RESOURCE_EXHAUSTED, "server busy"/"tenant busy";
an oversize message gets the same code and fails again after its retries)."""


@dataclass(frozen=True)
class Tls:
    """TLS for the channel: the CA to trust (the system's roots when None), and for mutual TLS the
    client's certificate chain and private key. Every field is PEM text, not a path."""

    ca: Optional[Pem] = None
    cert: Optional[Pem] = None
    key: Optional[Pem] = None

    def credentials(self) -> grpc.ChannelCredentials:
        """The grpc channel credentials these settings describe."""
        if (self.cert is None) != (self.key is None):
            raise ValueError("Tls: cert and key must be given together")
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.ca), private_key=_pem(self.key), certificate_chain=_pem(self.cert)
        )


def _pem(value: Optional[Pem]) -> Optional[bytes]:
    return value.encode("ascii") if isinstance(value, str) else value


@dataclass(frozen=True)
class RetryEvent:
    """A failed attempt that is about to be retried, as reported to `on_retry`."""

    method: str
    """The full method name, e.g. /kvpark.v1.InferenceService/Generate."""
    attempt: int
    """The attempt that failed, from 1."""
    code: grpc.StatusCode
    details: str
    delay_s: float
    """How long the client waits before the next attempt."""


RetryCallback = Callable[[RetryEvent], None]


@dataclass(frozen=True)
class Policy:
    """The options of one client, checked once: auth metadata, default deadline, retries."""

    metadata: Metadata
    timeout_s: float
    attempts: int
    backoff_s: float
    retry_codes: FrozenSet[grpc.StatusCode]
    on_retry: Optional[RetryCallback]

    @staticmethod
    def of(
        token: Optional[str],
        timeout_s: float,
        attempts: int,
        backoff_s: float,
        retry_codes: FrozenSet[grpc.StatusCode],
        on_retry: Optional[RetryCallback],
    ) -> Policy:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts}")
        if backoff_s < 0:
            raise ValueError(f"backoff_s must not be negative, got {backoff_s}")
        metadata: Metadata = (("authorization", f"Bearer {token}"),) if token else ()
        return Policy(metadata, timeout_s, attempts, backoff_s, frozenset(retry_codes), on_retry)

    def deadline(self, timeout_s: Optional[float]) -> float:
        """The monotonic time by which a call started now must end, all of its attempts together."""
        return time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)

    def retry_delay(
        self, method: str, attempt: int, code: Optional[grpc.StatusCode], details: str, deadline: float
    ) -> Optional[float]:
        """How long to wait before attempt `attempt + 1`, or None when the failure is final: a code that is
        not retried, the last attempt, or a deadline that would pass while waiting. As in the Node client:
        the first delay is `backoff_s`, doubled each time, times a random factor from 0.5 to 1.5."""
        if code not in self.retry_codes or attempt >= self.attempts:
            return None
        delay = self.backoff_s * 2 ** (attempt - 1) * (0.5 + random.random())
        if time.monotonic() + delay >= deadline:
            return None
        if self.on_retry is not None:
            self.on_retry(RetryEvent(method, attempt, code, details or "", delay))
        return delay

    def with_metadata(self, metadata: Optional[Sequence[Tuple[str, Union[str, bytes]]]]) -> MetadataList:
        """The call's own metadata plus the client's authorization, unless the call sets its own."""
        own: MetadataList = list(metadata or ())
        if any(k.lower() == "authorization" for k, _ in own):
            return own
        return own + list(self.metadata)


def remaining_s(deadline: float) -> float:
    """Seconds left until `deadline` (monotonic), never negative, so an expired one fails at once."""
    return max(deadline - time.monotonic(), 0.0)


def address(target: str, tls: Optional[Tls]) -> Tuple[str, Optional[Tls]]:
    """Splits a target into grpc's `host:port` and the TLS to use. Like the Node client's `baseUrl`, a
    target may be a URL: `https://` turns TLS on (the system's roots unless `tls` says otherwise),
    `http://` means plaintext; a bare `host:port` is plaintext unless `tls` is given."""
    for scheme, secure in (("https://", True), ("http://", False)):
        if target.startswith(scheme):
            rest = target[len(scheme) :].rstrip("/")
            if secure:
                return rest if ":" in rest else f"{rest}:443", tls or Tls()
            if tls is not None:
                raise ValueError(f"target {target!r} is plaintext (http://) but tls is set")
            return rest if ":" in rest else f"{rest}:80", None
    return target, tls
