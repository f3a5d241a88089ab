"""Uses the installed kvpark package (KvparkClient and AsyncKvparkClient) against running kvpark servers
and prints the outcomes as JSON for the jest suite (test/foundation/python-package.test.ts).

    client_check.py TARGET TLS_TARGET TOKEN CERT_DIR CLOSED_TARGET

TARGET serves plaintext with --auth-tokens and --requests-max 1; TLS_TARGET serves mutual TLS with the
same token; CERT_DIR holds ca.pem, client.pem and client.key; nothing listens on CLOSED_TARGET.
"""
import asyncio
import json
import os
import queue
import sys
from typing import Any, Callable, Dict, Iterator, List, Optional

import grpc

import kvpark
from kvpark import AsyncKvparkClient, KvparkClient, RetryEvent, Tls
from kvpark.grpc_health.v1 import health_pb2
from kvpark.v1 import common_pb2, inference_pb2, kvblocks_pb2, model_pb2

target, tls_target, token, cert_dir, closed_target = sys.argv[1:6]
TEXT = common_pb2.Prompt(text="The quick brown fox")
SMALL = inference_pb2.GenerateRequest(prompt=TEXT, sampling=inference_pb2.SamplingParams(max_tokens=8, temperature=0))
LONG = inference_pb2.GenerateRequest(prompt=TEXT, sampling=inference_pb2.SamplingParams(max_tokens=8000))
PIECE = inference_pb2.PrefillStreamRequest(text="A piece of context that holds the only admission slot.")


def read(name: str, text: bool) -> Any:
    with open(os.path.join(cert_dir, name), "r" if text else "rb") as f:
        return f.read()


def status(fn: Callable[[], Any]) -> List[str]:
    """[code name, details] of a call, ["OK", ""] when it succeeds."""
    try:
        fn()
        return ["OK", ""]
    except grpc.RpcError as err:
        return [err.code().name, err.details() or ""]


def summary(events: List[inference_pb2.GenerateResponse]) -> Dict[str, Any]:
    """The event kinds, in order with repeats collapsed, the token ids and the finish reason."""
    kinds: List[str] = []
    for e in events:
        kind = e.WhichOneof("event") or ""
        if not kinds or kinds[-1] != kind:
            kinds.append(kind)
    return {
        "kinds": kinds,
        "prompt_tokens": events[0].started.prompt_tokens,
        "ids": [i for e in events if e.WhichOneof("event") == "delta" for i in e.delta.token_ids],
        "finish": inference_pb2.FinishReason.Name(events[-1].finished.finish_reason),
        "completion_tokens": events[-1].finished.usage.completion_tokens,
    }


def retries(log: List[RetryEvent]) -> List[List[Any]]:
    return [[e.method, e.attempt, e.code.name] for e in log]


def sync_checks() -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    log: List[RetryEvent] = []
    with KvparkClient(target, token=token, on_retry=log.append) as c:
        out["health"] = health_pb2.HealthCheckResponse.ServingStatus.Name(c.check_health().status)
        out["tokenize"] = list(c.tokenize(model_pb2.TokenizeRequest(prompt=TEXT)).ids)
        out["generate"] = summary(list(c.generate(SMALL)))
        out["generate_again"] = summary(list(c.generate(SMALL)))
        lookup = c.lookup(kvblocks_pb2.LookupRequest(prompt=TEXT))
        out["lookup_prompt_tokens"] = lookup.prompt_tokens
        stats, info = c.stats(), c.info()
        out["stats_fingerprint_matches_info"] = stats.model_fingerprint == info.model_fingerprint != ""
        out["stats_block_tokens"] = [stats.block_tokens, info.block_tokens]
        out["detokenize"] = c.detokenize(model_pb2.DetokenizeRequest(ids=out["tokenize"])).text
        out["deadline"] = status(lambda: list(c.generate(LONG, timeout_s=0.3)))

        # Closing the stream cancels it on the server: the slot (--requests-max 1) is free again at once.
        stream = c.generate(LONG)
        first = next(stream)
        stream.close()
        out["closed_first"] = first.WhichOneof("event")
        out["after_close"] = summary(list(c.generate(SMALL)))["finish"]

        # A PrefillStream holds the only admission slot: a Generate is refused, and not retried with
        # attempts=1. With retries, the holder is cancelled when the first attempt has failed, and the
        # retry succeeds.
        pieces: "queue.Queue[Optional[inference_pb2.PrefillStreamRequest]]" = queue.Queue()

        def requests() -> Iterator[inference_pb2.PrefillStreamRequest]:
            while (piece := pieces.get()) is not None:
                yield piece

        pieces.put(PIECE)
        holder = c.inference.PrefillStream(requests())
        out["holder_first"] = next(holder).tokens_received > 0
        with KvparkClient(target, token=token, attempts=1) as once:
            out["busy_once"] = status(lambda: list(once.generate(SMALL)))

        def release(event: RetryEvent) -> None:
            busy_log.append(event)
            holder.cancel()
            pieces.put(None)

        busy_log: List[RetryEvent] = []
        with KvparkClient(target, token=token, attempts=10, backoff_s=0.05, on_retry=release) as patient:
            out["busy_retried"] = summary(list(patient.generate(SMALL)))["finish"]
        out["busy_retries"] = retries(busy_log)
        out["busy_first_details"] = busy_log[0].details if busy_log else ""
        out["holder_code"] = holder.code().name

        # The client's default deadline applies to streams too: a PrefillStream that sends nothing.
        with KvparkClient(target, token=token, timeout_s=0.3) as short:
            silent: "queue.Queue[None]" = queue.Queue()

            def never() -> Iterator[inference_pb2.PrefillStreamRequest]:
                silent.get()
                return
                yield

            out["default_deadline"] = status(lambda: list(short.inference.PrefillStream(never())))
            silent.put(None)
    out["retries"] = retries(log)

    with KvparkClient(target) as anonymous:
        out["no_token"] = status(lambda: anonymous.tokenize(model_pb2.TokenizeRequest(prompt=TEXT)))
        out["no_token_health"] = health_pb2.HealthCheckResponse.ServingStatus.Name(anonymous.check_health().status)

    # Nothing listens: UNAVAILABLE is retried until the attempts are spent, then raised.
    down_log: List[RetryEvent] = []
    with KvparkClient(closed_target, token=token, attempts=3, backoff_s=0.01, on_retry=down_log.append) as down:
        out["unavailable"] = status(down.stats)[0]
    out["unavailable_retries"] = retries(down_log)

    # Mutual TLS, the target given as a URL, PEM as str.
    tls = Tls(ca=read("ca.pem", True), cert=read("client.pem", True), key=read("client.key", True))
    with KvparkClient(f"https://{tls_target}", token=token, tls=tls) as secure:
        out["tls_health"] = health_pb2.HealthCheckResponse.ServingStatus.Name(secure.check_health().status)
        out["tls_generate"] = summary(list(secure.generate(SMALL)))["ids"]
    with KvparkClient(tls_target, token=token, tls=Tls(ca=read("ca.pem", True)), attempts=1) as no_cert:
        out["tls_no_client_cert"] = status(no_cert.stats)[0]
    return out


async def async_checks() -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    log: List[RetryEvent] = []
    async with AsyncKvparkClient(target, token=token, on_retry=log.append) as c:
        out["health"] = health_pb2.HealthCheckResponse.ServingStatus.Name((await c.check_health()).status)
        out["tokenize"] = list((await c.tokenize(model_pb2.TokenizeRequest(prompt=TEXT))).ids)
        out["generate"] = summary([e async for e in c.generate(SMALL)])
        lookup = await c.lookup(kvblocks_pb2.LookupRequest(prompt=TEXT))
        out["lookup_prompt_tokens"] = lookup.prompt_tokens
        stats, info = await c.stats(), await c.info()
        out["stats_fingerprint_matches_info"] = stats.model_fingerprint == info.model_fingerprint != ""

        async def drain(request: inference_pb2.GenerateRequest, timeout_s: Optional[float] = None) -> List[str]:
            try:
                async for _ in c.generate(request, timeout_s=timeout_s):
                    pass
                return ["OK", ""]
            except grpc.RpcError as err:
                return [err.code().name, err.details() or ""]

        out["deadline"] = await drain(LONG, 0.3)

        # The same busy case as the blocking client, with the holder on the raw stub (token included).
        holder = c.inference.PrefillStream()
        await holder.write(PIECE)
        out["holder_first"] = (await holder.read()).tokens_received > 0
        async with AsyncKvparkClient(target, token=token, attempts=1) as once:
            try:
                async for _ in once.generate(SMALL):
                    pass
                out["busy_once"] = ["OK", ""]
            except grpc.RpcError as err:
                out["busy_once"] = [err.code().name, err.details() or ""]
        busy_log: List[RetryEvent] = []

        def release(event: RetryEvent) -> None:
            busy_log.append(event)
            holder.cancel()

        async with AsyncKvparkClient(target, token=token, attempts=10, backoff_s=0.05, on_retry=release) as patient:
            out["busy_retried"] = summary([e async for e in patient.generate(SMALL)])["finish"]
        out["busy_retries"] = retries(busy_log)
        out["holder_code"] = (await holder.code()).name
    out["retries"] = retries(log)

    async with AsyncKvparkClient(target) as anonymous:
        try:
            await anonymous.tokenize(model_pb2.TokenizeRequest(prompt=TEXT))
            out["no_token"] = ["OK", ""]
        except grpc.RpcError as err:
            out["no_token"] = [err.code().name, err.details() or ""]

    down_log: List[RetryEvent] = []
    async with AsyncKvparkClient(closed_target, attempts=3, backoff_s=0.01, on_retry=down_log.append) as down:
        try:
            await down.stats()
            out["unavailable"] = "OK"
        except grpc.RpcError as err:
            out["unavailable"] = err.code().name
    out["unavailable_retries"] = retries(down_log)

    # Mutual TLS, a host:port target, PEM as bytes.
    tls = Tls(ca=read("ca.pem", False), cert=read("client.pem", False), key=read("client.key", False))
    async with AsyncKvparkClient(tls_target, token=token, tls=tls) as secure:
        out["tls_health"] = health_pb2.HealthCheckResponse.ServingStatus.Name((await secure.check_health()).status)
        out["tls_generate"] = summary([e async for e in secure.generate(SMALL)])["ids"]
    return out


print(
    json.dumps(
        {
            "version": kvpark.__version__,
            "module": os.path.dirname(kvpark.__file__),
            "sync": sync_checks(),
            "async": asyncio.run(async_checks()),
        }
    )
)
