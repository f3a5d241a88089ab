#!/usr/bin/python3
"""Calls a running kvpark server with Python gRPC stubs and prints the outcomes as JSON for the jest suite."""
import json
import sys

import grpc

from kvpark.v1 import common_pb2, inference_pb2, inference_pb2_grpc

target, token = sys.argv[1], sys.argv[2]
md = [("authorization", f"Bearer {token}")]
out = {}

with grpc.insecure_channel(target) as channel:
    stub = inference_pb2_grpc.InferenceServiceStub(channel)

    def generate(prompt, sampling, timeout=60):
        req = inference_pb2.GenerateRequest(prompt=prompt, sampling=sampling)
        return list(stub.Generate(req, metadata=md, timeout=timeout))

    text = common_pb2.Prompt(text="The quick brown fox")
    runs = [generate(text, inference_pb2.SamplingParams(max_tokens=8, temperature=0.7, seed=42)) for _ in range(2)]
    first = runs[0]
    out["first_event"] = first[0].WhichOneof("event")
    out["prompt_tokens"] = first[0].started.prompt_tokens
    out["last_event"] = first[-1].WhichOneof("event")
    out["finish_reason"] = inference_pb2.FinishReason.Name(first[-1].finished.finish_reason)
    out["ids"] = [list(r.delta.token_ids) for r in first if r.WhichOneof("event") == "delta"]
    out["ids_again"] = [list(r.delta.token_ids) for r in runs[1] if r.WhichOneof("event") == "delta"]
    out["usage_completion"] = first[-1].finished.usage.completion_tokens

    def status(fn):
        try:
            fn()
            return ["OK", ""]
        except grpc.RpcError as err:
            return [err.code().name, err.details()]

    out["missing_prompt"] = status(lambda: generate(None, inference_pb2.SamplingParams(max_tokens=1)))
    out["bad_max_tokens"] = status(lambda: generate(text, inference_pb2.SamplingParams(max_tokens=-5)))
    out["deadline"] = status(lambda: generate(text, inference_pb2.SamplingParams(max_tokens=8000), timeout=0.3))
    out["max_tokens_over_limit"] = status(lambda: generate(text, inference_pb2.SamplingParams(max_tokens=100000)))
    out["unknown_model"] = status(lambda: list(stub.Generate(inference_pb2.GenerateRequest(model="nope", prompt=text), metadata=md)))
    out["bad_token_id"] = status(lambda: generate(common_pb2.Prompt(tokens=common_pb2.TokenIds(ids=[1, 2, 4000000])), None))
    out["too_long"] = status(lambda: generate(common_pb2.Prompt(tokens=common_pb2.TokenIds(ids=[5] * 40000)), None))

    # Cancel mid-stream, then the engine serves the next request.
    call = stub.Generate(inference_pb2.GenerateRequest(prompt=text, sampling=inference_pb2.SamplingParams(max_tokens=5000)), metadata=md)
    seen = 0
    for response in call:
        if response.WhichOneof("event") == "delta":
            seen += 1
            if seen == 2:
                call.cancel()
                break
    out["cancelled_code"] = call.code().name
    after = generate(text, inference_pb2.SamplingParams(max_tokens=3, temperature=0.0))
    out["after_cancel_finish"] = inference_pb2.FinishReason.Name(after[-1].finished.finish_reason)

    out["no_token"] = status(lambda: list(stub.Generate(inference_pb2.GenerateRequest(prompt=text))))

print(json.dumps(out))
