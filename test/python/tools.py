#!/usr/bin/python3
"""A tool-call round trip with Python gRPC stubs: tools in, a parsed tool call out, the result back,
the model continues. Prints the outcomes as JSON for the jest suite."""
import json
import sys

import grpc

from kvpark.v1 import common_pb2, inference_pb2, inference_pb2_grpc

target, token = sys.argv[1], sys.argv[2]
md = [("authorization", f"Bearer {token}")]
weather = common_pb2.Tool(
    name="get_weather",
    description="The weather in a city",
    parameters_json=json.dumps(
        {"type": "object", "properties": {"city": {"type": "string", "enum": ["Oslo", "Lima"]}}, "required": ["city"]}
    ),
)
sampling = inference_pb2.SamplingParams(max_tokens=48, temperature=1.0, seed=5)
out = {}

with grpc.insecure_channel(target) as channel:
    stub = inference_pb2_grpc.InferenceServiceStub(channel)

    def generate(messages, mode):
        chat = common_pb2.ChatPrompt(
            messages=messages, tools=[weather], tool_choice=common_pb2.ToolChoice(mode=mode)
        )
        req = inference_pb2.GenerateRequest(prompt=common_pb2.Prompt(chat=chat), sampling=sampling)
        return list(stub.Generate(req, metadata=md, timeout=120))

    messages = [common_pb2.ChatMessage(role="user", content="What is the weather in Oslo?")]
    first = generate(messages, common_pb2.TOOL_CHOICE_MODE_REQUIRED)
    calls = [r.tool_call for r in first if r.WhichOneof("event") == "tool_call"]
    out["calls"] = [{"id": c.id, "name": c.name, "arguments": json.loads(c.arguments_json)} for c in calls]
    out["first_finish"] = inference_pb2.FinishReason.Name(first[-1].finished.finish_reason)
    messages.append(common_pb2.ChatMessage(role="assistant", content="", tool_calls=calls))
    for c in calls:
        messages.append(common_pb2.ChatMessage(role="tool", content="12 C and sunny", tool_call_id=c.id))
    second = generate(messages, common_pb2.TOOL_CHOICE_MODE_NONE)
    out["second_events"] = sorted({r.WhichOneof("event") for r in second})
    out["second_reused"] = second[0].started.cache.ram_tokens + second[0].started.cache.ssd_tokens
    out["second_prompt_tokens"] = second[0].started.prompt_tokens
    out["second_finish"] = inference_pb2.FinishReason.Name(second[-1].finished.finish_reason)
    try:
        bad = messages + [common_pb2.ChatMessage(role="tool", content="x", tool_call_id="nope")]
        generate(bad, common_pb2.TOOL_CHOICE_MODE_AUTO)
        out["unmatched_result"] = ["OK", ""]
    except grpc.RpcError as err:
        out["unmatched_result"] = [err.code().name, err.details()]

print(json.dumps(out))
