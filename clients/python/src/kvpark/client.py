"""The synchronous kvpark client, on grpc's blocking API."""
from __future__ import annotations

import collections
import time
from types import TracebackType
from typing import Any, Callable, FrozenSet, Generator, Optional, Sequence, Tuple, Type

import grpc

from kvpark._options import (
    DEFAULT_ATTEMPTS,
    DEFAULT_BACKOFF_S,
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT_S,
    RETRY_CODES,
    Policy,
    RetryCallback,
    Tls,
    address,
    remaining_s,
)
from kvpark.grpc_health.v1 import health_pb2, health_pb2_grpc
from kvpark.v1 import (
    inference_pb2,
    inference_pb2_grpc,
    kvblocks_pb2,
    kvblocks_pb2_grpc,
    model_pb2,
    model_pb2_grpc,
)

ChannelOptions = Sequence[Tuple[str, Any]]


class _CallDetails(
    collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    """grpc.ClientCallDetails is abstract; interceptors hand their continuation a concrete one."""


class _Interceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the bearer token and the default deadline to every call, and retries unary calls.

    Streaming calls are not retried here: part of their output may already have been consumed, so only
    the caller can decide whether repeating them is safe (`KvparkClient.generate` does, before the
    first event). To retry, the interceptor waits for each attempt's outcome, so a unary `.future()`
    call returns once it has completed."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy

    def _details(self, details: grpc.ClientCallDetails, timeout: Optional[float]) -> _CallDetails:
        return _CallDetails(
            details.method,
            timeout,
            self._policy.with_metadata(details.metadata),
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def _timeout(self, details: grpc.ClientCallDetails) -> float:
        return self._policy.timeout_s if details.timeout is None else float(details.timeout)

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any) -> Any:
        # The deadline covers every attempt and the waits between them, as in the Node client.
        deadline = time.monotonic() + self._timeout(details)
        attempt = 1
        while True:
            # grpc returns a failed call as an outcome (an RpcError that is also a Call), not raised.
            outcome = continuation(self._details(details, remaining_s(deadline)), request)
            code = outcome.code()
            if code == grpc.StatusCode.OK:
                return outcome
            delay = self._policy.retry_delay(details.method, attempt, code, outcome.details(), deadline)
            if delay is None:
                return outcome
            time.sleep(delay)
            attempt += 1

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(self._details(details, self._timeout(details)), request)

    def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request_iterator: Any
    ) -> Any:
        return continuation(self._details(details, self._timeout(details)), request_iterator)

    def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request_iterator: Any
    ) -> Any:
        return continuation(self._details(details, self._timeout(details)), request_iterator)


class KvparkClient:
    """A blocking client of one kvpark server, mirroring the Node client (`createKvparkClient`).

    Every call carries the bearer token (when given) and a deadline (`timeout_s`, 60 s, unless the call
    sets its own). Unary calls that fail with a code in `retry_codes` (UNAVAILABLE, RESOURCE_EXHAUSTED)
    are repeated up to `attempts` times in all, after `backoff_s`, then doubling, with jitter, within the
    call's deadline; `generate` is retried likewise when it fails before its first event.

    The typed methods cover the common calls; `inference`, `kv_blocks`, `model` and `health` are the
    generated stubs on the same channel (token, deadline and unary retries included) for the rest, such
    as PrefillStream, GetBlocks, PutBlocks and Pin.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: Optional[str] = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        attempts: int = DEFAULT_ATTEMPTS,
        backoff_s: float = DEFAULT_BACKOFF_S,
        tls: Optional[Tls] = None,
        retry_codes: FrozenSet[grpc.StatusCode] = RETRY_CODES,
        on_retry: Optional[RetryCallback] = None,
        channel_options: ChannelOptions = (),
    ) -> None:
        """`target` is `host:port` (plaintext unless `tls` is given) or a URL (`http://`, `https://`)."""
        self._policy = Policy.of(token, timeout_s, attempts, backoff_s, retry_codes, on_retry)
        host_port, tls = address(target, tls)
        if tls is None:
            self._channel = grpc.insecure_channel(host_port, options=list(channel_options))
        else:
            self._channel = grpc.secure_channel(host_port, tls.credentials(), options=list(channel_options))
        self.channel: grpc.Channel = grpc.intercept_channel(self._channel, _Interceptor(self._policy))
        self.inference = inference_pb2_grpc.InferenceServiceStub(self.channel)
        self.kv_blocks = kvblocks_pb2_grpc.KVBlocksServiceStub(self.channel)
        self.model = model_pb2_grpc.ModelServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def close(self) -> None:
        """Closes the channel; calls still running are cancelled."""
        self._channel.close()

    def __enter__(self) -> KvparkClient:
        return self

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()

    def generate(
        self, request: inference_pb2.GenerateRequest, *, timeout_s: Optional[float] = None
    ) -> Generator[inference_pb2.GenerateResponse, None, None]:
        """Streams a generation's events: `started`, `progress`, `delta`, `reasoning`, `tool_call`, `finished`.

        The call starts when the iterator is first advanced. Closing the iterator (`close()`, or leaving a
        `with contextlib.closing(...)` block) cancels it on the server. A failure before the first event
        (a busy server, an engine restarting) is retried as unary calls are; once an event has arrived,
        failures are raised as `grpc.RpcError`.
        """
        method = "/kvpark.v1.InferenceService/Generate"
        deadline = self._policy.deadline(timeout_s)
        attempt = 1
        while True:
            call = self.inference.Generate(request, timeout=remaining_s(deadline))
            try:
                first = next(call)
                break
            except StopIteration:
                return
            except grpc.RpcError as err:
                delay = self._policy.retry_delay(method, attempt, err.code(), err.details(), deadline)
                if delay is None:
                    raise
                time.sleep(delay)
                attempt += 1
        try:
            yield first
            yield from call
        finally:
            call.cancel()

    def tokenize(
        self, request: model_pb2.TokenizeRequest, *, timeout_s: Optional[float] = None
    ) -> model_pb2.TokenizeResponse:
        """A prompt's token ids, exactly as Generate would see them."""
        return self.model.Tokenize(request, timeout=timeout_s)

    def detokenize(
        self, request: model_pb2.DetokenizeRequest, *, timeout_s: Optional[float] = None
    ) -> model_pb2.DetokenizeResponse:
        """The text of token ids."""
        return self.model.Detokenize(request, timeout=timeout_s)

    def info(self, *, timeout_s: Optional[float] = None) -> model_pb2.InfoResponse:
        """What the served model is and can do."""
        return self.model.Info(model_pb2.InfoRequest(), timeout=timeout_s)

    def lookup(
        self, request: kvblocks_pb2.LookupRequest, *, timeout_s: Optional[float] = None
    ) -> kvblocks_pb2.LookupResponse:
        """How many leading tokens of a prompt are cached, in which tier."""
        return self.kv_blocks.Lookup(request, timeout=timeout_s)

    def stats(self, *, timeout_s: Optional[float] = None) -> kvblocks_pb2.StatsResponse:
        """The cache's size and counters, and the engine's."""
        return self.kv_blocks.Stats(kvblocks_pb2.StatsRequest(), timeout=timeout_s)

    def check_health(
        self, service: str = "", *, timeout_s: Optional[float] = None
    ) -> health_pb2.HealthCheckResponse:
        """grpc.health.v1 Check: SERVING once the model is loaded (needs no token)."""
        return self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
