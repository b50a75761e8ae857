"""The HTTP API's request schemas and how a chat maps onto the instruction model's prompt.

Strict, as OpenAI's API is: unknown fields are refused (400) rather than silently ignored, and types are
not coerced ("8" is not an integer, 1 is not a boolean; an integer is a valid number). Every size and
range comes from `llm.serving.limits`, shared with the chat app.
"""
from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from llm.serving.limits import (MAX_CONTENT_PARTS, MAX_EXPLAIN_TEXTS, MAX_MESSAGE_CHARS, MAX_MESSAGES, MAX_NEW_TOKENS, MAX_SEED, MAX_STOP,
                                MAX_STOP_CHARS, MAX_TEXT_CHARS, MAX_TEXTS)
from llm.serving.registry import INSTRUCT_MODEL_ID


STRICT = ConfigDict(extra="forbid", strict=True)


class TextPart(BaseModel):
    model_config = STRICT
    type: Literal["text"]
    text: str = Field(max_length=MAX_MESSAGE_CHARS)


class ChatMessage(BaseModel):
    model_config = STRICT
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] = Field(json_schema_extra={"maxLength": MAX_MESSAGE_CHARS})
    name: str | None = Field(default=None, max_length=64)  # accepted, ignored

    @field_validator("content")
    @classmethod
    def _check_size(cls, v):
        """The message limit holds for the text, whichever form it is sent in."""
        if isinstance(v, list) and len(v) > MAX_CONTENT_PARTS:
            raise ValueError(f"at most {MAX_CONTENT_PARTS} content parts per message")
        size = len(v) if isinstance(v, str) else sum(len(p.text) for p in v)
        if size > MAX_MESSAGE_CHARS:
            raise ValueError(f"the text of one message is at most {MAX_MESSAGE_CHARS:,} characters, not {size:,}")
        return v

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = STRICT
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The subset of OpenAI's chat completion request that a local GPT-2 can honour; unknown fields -> 400."""
    model_config = STRICT
    # null means the default for every optional field, as in OpenAI's API (_null_is_the_default)
    model: str | None = Field(default=INSTRUCT_MODEL_ID, max_length=200)  # any name is accepted; answered by the instruct model
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    temperature: float | None = Field(default=0.0, ge=0.0, le=2.0)  # 0 = greedy (OpenAI's default is 1; greedy suits GPT-2)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=1, le=50_257)  # extension, not in OpenAI's API
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS)  # newer name of max_tokens
    stop: str | list[str] | None = None
    n: int | None = Field(default=1, ge=1, le=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    user: str | None = Field(default=None, max_length=256)  # accepted, ignored

    @field_validator("model", "temperature", "n", "stream")
    @classmethod
    def _null_is_the_default(cls, v, info):
        return cls.model_fields[info.field_name].default if v is None else v

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences")
        if any(not s or len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"each stop sequence must be 1 to {MAX_STOP_CHARS} characters")
        return stops

    @field_validator("messages")
    @classmethod
    def _check_last(cls, v: list[ChatMessage]):
        if v[-1].role != "user":
            raise ValueError("the last message must have role 'user': it is the instruction to answer")
        if not v[-1].text.strip():
            raise ValueError("the last user message is empty")
        return v


# "Not blank": at least one character outside every whitespace set a client or this server may use (Python's
# str.isspace, which counts U+001C-U+001F and U+0085, and JSON Schema's ECMA \s, which counts U+FEFF), written
# out so that the schema and the check below agree exactly.
_BLANK = "\\t\\n\\u000b\\u000c\\r \\u001c-\\u001f\\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff"
NOT_BLANK = f"[^{_BLANK}]"
# Declared in the schema (what a client may send) and checked by the validator below with friendlier messages.
TEXT_SCHEMA = {"minLength": 1, "maxLength": MAX_TEXT_CHARS, "pattern": NOT_BLANK}


class ClassifyRequest(BaseModel):
    # With "explain": true at most MAX_EXPLAIN_TEXTS texts; stated in the schema too (if/then), so clients and
    # schema-driven tests know it.
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={
        "if": {"properties": {"explain": {"const": True}}, "required": ["explain"]},
        "then": {"properties": {"texts": {"maxItems": MAX_EXPLAIN_TEXTS}}}})
    texts: list[Annotated[str, Field(json_schema_extra=TEXT_SCHEMA)]] = Field(min_length=1, max_length=MAX_TEXTS)
    model: str | None = Field(default=None, max_length=200)  # accepted, ignored
    threshold: float | None = Field(default=None, gt=0, lt=1, allow_inf_nan=False,
                                    description="operating point on the calibrated p_spam for this request "
                                                "(default: the checkpoint's)")
    explain: bool = Field(default=False, description="add each text's most influential words (occlusion: the text "
                                                    "scored again without each word, so slower)")

    @model_validator(mode="after")
    def _check_explain_size(self):
        if self.explain and len(self.texts) > MAX_EXPLAIN_TEXTS:
            raise ValueError(f"with explain, at most {MAX_EXPLAIN_TEXTS} texts per request (each is scored again "
                             f"without each of its words); send the others without explain")
        return self

    @field_validator("texts")
    @classmethod
    def _check_texts(cls, v: list[str]):
        for i, t in enumerate(v):
            if not re.search(NOT_BLANK, t):
                raise ValueError(f"texts[{i}] is empty: there is nothing to classify")
            if len(t) > MAX_TEXT_CHARS:
                raise ValueError(f"texts[{i}] has {len(t):,} characters; at most {MAX_TEXT_CHARS:,} per text")
        return v


def to_instruction(messages: list[ChatMessage]) -> tuple[str, list[tuple[str, str]]]:
    """OpenAI messages -> (instruction, history) for the Alpaca-style instruction model.

    The last user message is the instruction. Earlier user messages each followed by an assistant
    message become (instruction, response) history pairs; consecutive user messages are joined with a
    newline; an assistant message with no question before it is dropped. System/developer messages are
    ignored: the prompt template (llm/prompt.py) has its own fixed preamble and GPT-2 was not trained
    to follow system prompts.
    """
    history: list[tuple[str, str]] = []
    pending: str | None = None
    for m in messages[:-1]:
        if m.role == "user":
            pending = m.text if pending is None else pending + "\n" + m.text
        elif m.role == "assistant" and pending is not None:
            history.append((pending, m.text))
            pending = None
    last = messages[-1].text
    return (last if pending is None else pending + "\n" + last), history


# ----------------------------------------------------------------------------- responses (documented in /openapi.json)
class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class Verdict(BaseModel):
    index: int
    label: Literal["spam", "ham"]
    p_spam: float = Field(ge=0.0, le=1.0, description="calibrated spam probability")
    band: Literal["spam", "likely spam", "unsure", "ham"] = Field(
        description="spam: p >= max(0.9, threshold); likely spam: threshold <= p below that; "
                    "unsure: min(0.2, threshold) <= p < threshold; ham: below")


class WordEffect(BaseModel):
    word: str
    effect: float = Field(ge=-1.0, le=1.0, description="p_spam minus p_spam without the word")


class Explanation(BaseModel):
    towards_spam: list[WordEffect] = Field(description="the words whose removal lowers p_spam most, strongest first")
    towards_ham: list[WordEffect] = Field(description="the words whose removal raises p_spam most, strongest first")


class ExplainedVerdict(Verdict):
    explanation: Explanation | None = Field(default=None, description="with explain=true")


class ClassifyResponse(BaseModel):
    object: Literal["list"]
    model: str
    threshold: float = Field(gt=0, lt=1, description="the operating point used: label is spam when p_spam >= it")
    data: list[ExplainedVerdict]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    ready: bool


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


def error_responses(*codes: int) -> dict:
    """OpenAPI `responses` for these error statuses, all with the same {"error": {...}} body."""
    what = {400: "invalid request", 401: "missing or wrong API key", 413: "body too large",
            429: "busy: retry after the Retry-After header's seconds", 503: "model not available (yet)"}
    return {code: {"model": ErrorBody, "description": what[code]} for code in codes}
