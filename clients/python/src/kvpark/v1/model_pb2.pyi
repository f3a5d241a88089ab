from kvpark.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor
TOOL_CALL_FORMAT_HERMES: ToolCallFormat
TOOL_CALL_FORMAT_LLAMA3_JSON: ToolCallFormat
TOOL_CALL_FORMAT_MISTRAL: ToolCallFormat
TOOL_CALL_FORMAT_UNSPECIFIED: ToolCallFormat

class DetokenizeRequest(_message.Message):
    __slots__ = ["ids", "skip_special_tokens"]
    IDS_FIELD_NUMBER: _ClassVar[int]
    SKIP_SPECIAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    skip_special_tokens: bool
    def __init__(self, ids: _Optional[_Iterable[int]] = ..., skip_special_tokens: bool = ...) -> None: ...

class DetokenizeResponse(_message.Message):
    __slots__ = ["text"]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ["block_tokens", "chat_template", "context_tokens", "model", "model_fingerprint", "model_type", "reasoning", "tool_call_format", "vocab_size"]
    BLOCK_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    MODEL_TYPE_FIELD_NUMBER: _ClassVar[int]
    REASONING_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_FORMAT_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    block_tokens: int
    chat_template: bool
    context_tokens: int
    model: str
    model_fingerprint: str
    model_type: str
    reasoning: bool
    tool_call_format: ToolCallFormat
    vocab_size: int
    def __init__(self, model: _Optional[str] = ..., model_fingerprint: _Optional[str] = ..., model_type: _Optional[str] = ..., context_tokens: _Optional[int] = ..., block_tokens: _Optional[int] = ..., vocab_size: _Optional[int] = ..., chat_template: bool = ..., tool_call_format: _Optional[_Union[ToolCallFormat, str]] = ..., reasoning: bool = ...) -> None: ...

class TokenizeRequest(_message.Message):
    __slots__ = ["prompt"]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    prompt: _common_pb2.Prompt
    def __init__(self, prompt: _Optional[_Union[_common_pb2.Prompt, _Mapping]] = ...) -> None: ...

class TokenizeResponse(_message.Message):
    __slots__ = ["ids", "rendered"]
    IDS_FIELD_NUMBER: _ClassVar[int]
    RENDERED_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    rendered: str
    def __init__(self, ids: _Optional[_Iterable[int]] = ..., rendered: _Optional[str] = ...) -> None: ...

class ToolCallFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []
