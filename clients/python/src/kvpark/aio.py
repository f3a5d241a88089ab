"""The asyncio kvpark client, on grpc.aio."""
from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import Any, AsyncGenerator, Callable, FrozenSet, Optional, Sequence, Tuple, Type

import grpc
import grpc.aio

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

# grpc.aio versions without the fix of grpc/grpc#33951 (Debian 12 has 1.51) hand the interceptors of
# streaming calls an absolute deadline (seconds since the epoch) where the timeout belongs. No timeout
# is three years long, so a larger value is taken for such a deadline.
_EPOCH_DEADLINE_MIN_S = 1e8


class _Base:
    def __init__(self, policy: Policy) -> None:
        self._policy = policy

    def _details(self, details: grpc.aio.ClientCallDetails, timeout: Optional[float]) -> grpc.aio.ClientCallDetails:
        metadata = self._policy.with_metadata(tuple(details.metadata or ()))
        return grpc.aio.ClientCallDetails(
            details.method, timeout, grpc.aio.Metadata(*metadata), details.credentials, details.wait_for_ready
        )

    def _timeout(self, details: grpc.aio.ClientCallDetails) -> float:
        """The call's own timeout, else the client's."""
        if details.timeout is None:
            return self._policy.timeout_s
        if details.timeout > _EPOCH_DEADLINE_MIN_S:
            return max(details.timeout - time.time(), 0.0)
        return float(details.timeout)


# grpc.aio sorts a channel's interceptors by kind, one kind each, so there is one class per kind.
class _UnaryUnary(_Base, grpc.aio.UnaryUnaryClientInterceptor):
    """Token, default deadline and retries of unary calls, as `kvpark.client` does for blocking calls."""

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        deadline = self._policy.deadline(self._timeout(details))
        attempt = 1
        while True:
            call = await continuation(self._details(details, remaining_s(deadline)), request)
            code = await call.code()
            if code == grpc.StatusCode.OK:
                return call
            method = details.method.decode() if isinstance(details.method, bytes) else details.method
            delay = self._policy.retry_delay(method, attempt, code, await call.details(), deadline)
            if delay is None:
                return call
            await asyncio.sleep(delay)
            attempt += 1


class _UnaryStream(_Base, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._details(details, self._timeout(details)), request)


class _StreamUnary(_Base, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(details, self._timeout(details)), request_iterator)


class _StreamStream(_Base, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(details, self._timeout(details)), request_iterator)


class AsyncKvparkClient:
    """The asyncio twin of `kvpark.KvparkClient`: the same options, defaults and retries.

    Create it inside a running event loop (grpc.aio binds a channel to its loop) and close it with
    `await client.close()` or `async with`.
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
        interceptors = [_UnaryUnary(self._policy), _UnaryStream(self._policy)]
        interceptors += [_StreamUnary(self._policy), _StreamStream(self._policy)]
        if tls is None:
            self.channel = grpc.aio.insecure_channel(
                host_port, options=list(channel_options), interceptors=interceptors
            )
        else:
            self.channel = grpc.aio.secure_channel(
                host_port, tls.credentials(), options=list(channel_options), interceptors=interceptors
            )
        self.inference = inference_pb2_grpc.InferenceServiceStub(self.channel)
        self.kv_blocks = kvblocks_pb2_grpc.KVBlocksServiceStub(self.channel)
        self.model = model_pb2_grpc.ModelServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    async def close(self) -> None:
        """Closes the channel; calls still running are cancelled."""
        await self.channel.close()

    async def __aenter__(self) -> AsyncKvparkClient:
        return self

    async def __aexit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        await self.close()

    async def generate(
        self, request: inference_pb2.GenerateRequest, *, timeout_s: Optional[float] = None
    ) -> AsyncGenerator[inference_pb2.GenerateResponse, None]:
        """Streams a generation's events, as `KvparkClient.generate` does; `aclose()` cancels the call."""
        method = "/kvpark.v1.InferenceService/Generate"
        deadline = self._policy.deadline(timeout_s)
        attempt = 1
        while True:
            call = self.inference.Generate(request, timeout=remaining_s(deadline))
            events = call.__aiter__()
            try:
                first = await events.__anext__()
                break
            except StopAsyncIteration:
                return
            except grpc.aio.AioRpcError as err:
                delay = self._policy.retry_delay(method, attempt, err.code(), err.details() or "", deadline)
                if delay is None:
                    raise
                await asyncio.sleep(delay)
                attempt += 1
        try:
            yield first
            async for event in events:
                yield event
        finally:
            call.cancel()

    async def tokenize(
        self, request: model_pb2.TokenizeRequest, *, timeout_s: Optional[float] = None
    ) -> model_pb2.TokenizeResponse:
        """A prompt's token ids, exactly as Generate would see them."""
        return await self.model.Tokenize(request, timeout=timeout_s)

    async def detokenize(
        self, request: model_pb2.DetokenizeRequest, *, timeout_s: Optional[float] = None
    ) -> model_pb2.DetokenizeResponse:
        """The text of token ids."""
        return await self.model.Detokenize(request, timeout=timeout_s)

    async def info(self, *, timeout_s: Optional[float] = None) -> model_pb2.InfoResponse:
        """What the served model is and can do."""
        return await self.model.Info(model_pb2.InfoRequest(), timeout=timeout_s)

    async def lookup(
        self, request: kvblocks_pb2.LookupRequest, *, timeout_s: Optional[float] = None
    ) -> kvblocks_pb2.LookupResponse:
        """How many leading tokens of a prompt are cached, in which tier."""
        return await self.kv_blocks.Lookup(request, timeout=timeout_s)

    async def stats(self, *, timeout_s: Optional[float] = None) -> kvblocks_pb2.StatsResponse:
        """The cache's size and counters, and the engine's."""
        return await self.kv_blocks.Stats(kvblocks_pb2.StatsRequest(), timeout=timeout_s)

    async def check_health(
        self, service: str = "", *, timeout_s: Optional[float] = None
    ) -> health_pb2.HealthCheckResponse:
        """grpc.health.v1 Check: SERVING once the model is loaded (needs no token)."""
        return await self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
