#!/usr/bin/env python3
"""Streams a chat completion from kvpark and prints where the prompt's KV cache came from.

    /usr/bin/python3 -m venv --system-site-packages .venv
    .venv/bin/pip install --no-build-isolation --no-index ./clients/python
    .venv/bin/python clients/python/example.py --target 127.0.0.1:50051 "Hello"
"""
import argparse
import os
import sys

import grpc

from kvpark import KvparkClient, Tls
from kvpark.v1 import common_pb2, inference_pb2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt")
    parser.add_argument("--target", default="127.0.0.1:50051", help="host:port, or an http:// or https:// URL")
    parser.add_argument("--token", default=os.environ.get("KVPARK_TOKEN"), help="bearer token (default: $KVPARK_TOKEN)")
    parser.add_argument("--ca", help="PEM file of the CA to trust; turns TLS on")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=120.0, help="deadline in seconds")
    args = parser.parse_args()

    tls = None
    if args.ca:
        with open(args.ca, "rb") as f:
            tls = Tls(ca=f.read())
    request = inference_pb2.GenerateRequest(
        prompt=common_pb2.Prompt(
            chat=common_pb2.ChatPrompt(messages=[common_pb2.ChatMessage(role="user", content=args.prompt)])
        ),
        sampling=inference_pb2.SamplingParams(max_tokens=args.max_tokens, temperature=0.0),
    )
    with KvparkClient(args.target, token=args.token, tls=tls) as client:
        try:
            for event in client.generate(request, timeout_s=args.timeout):
                kind = event.WhichOneof("event")
                if kind == "started":
                    c = event.started.cache
                    print(
                        f"[{event.started.prompt_tokens} prompt tokens: {c.ram_tokens} from RAM, "
                        f"{c.ssd_tokens} from SSD, {c.recomputed_tokens} computed]",
                        file=sys.stderr,
                    )
                elif kind == "delta":
                    print(event.delta.text, end="", flush=True)
                elif kind == "finished":
                    f = event.finished
                    reason = inference_pb2.FinishReason.Name(f.finish_reason)
                    print(f"\n[{reason}; ttft {f.timings.ttft_ms:.0f} ms]", file=sys.stderr)
        except grpc.RpcError as err:
            print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
