#!/usr/bin/python3
"""Streams a completion from kvpark and prints where the prompt's KV cache came from.

    clients/python/generate_stubs.sh /tmp/kvpark_stubs
    PYTHONPATH=/tmp/kvpark_stubs /usr/bin/python3 clients/python/example.py --target 127.0.0.1:50051 "Hello"
"""
import argparse
import sys

import grpc

from kvpark.v1 import common_pb2, inference_pb2, inference_pb2_grpc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt")
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--token", help="bearer token, when the server requires one")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=120.0, help="deadline in seconds")
    args = parser.parse_args()

    metadata = [("authorization", f"Bearer {args.token}")] if args.token else []
    with grpc.insecure_channel(args.target) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        request = inference_pb2.GenerateRequest(
            prompt=common_pb2.Prompt(
                chat=common_pb2.ChatPrompt(messages=[common_pb2.ChatMessage(role="user", content=args.prompt)])
            ),
            sampling=inference_pb2.SamplingParams(max_tokens=args.max_tokens, temperature=0.0),
        )
        try:
            for response in stub.Generate(request, metadata=metadata, timeout=args.timeout):
                kind = response.WhichOneof("event")
                if kind == "started":
                    c = response.started.cache
                    print(f"[{response.started.prompt_tokens} prompt tokens: {c.ram_tokens} from RAM, "
                          f"{c.ssd_tokens} from SSD, {c.recomputed_tokens} computed]", file=sys.stderr)
                elif kind == "delta":
                    print(response.delta.text, end="", flush=True)
                elif kind == "finished":
                    f = response.finished
                    print(f"\n[{inference_pb2.FinishReason.Name(f.finish_reason)}; "
                          f"ttft {f.timings.ttft_ms:.0f} ms]", file=sys.stderr)
        except grpc.RpcError as err:
            print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
