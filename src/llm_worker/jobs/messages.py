"""Chat messages: what a job's history holds and what a model is sent.

A message has a ``role`` and ``content``: text, or a list of parts (text, an image,
audio, a file) as OpenAI's chat-completions API names them; an assistant's message
may carry the tool calls its model made, a ``tool`` message the result of one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

Role = Literal["system", "developer", "user", "assistant", "function", "tool"]


class _Part(BaseModel):
    """A part of a message's content, by its ``type``; its fields as OpenAI's
    chat-completions API names them. Fields this version does not know are kept and
    forwarded (a provider that cannot send one refuses the job, naming it)."""

    model_config = ConfigDict(frozen=True, extra="allow")


class TextPart(_Part):
    type: Literal["text"]
    text: str


class ImageUrl(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")

    url: str = Field(min_length=1)
    """``https://...`` or a data URL (``data:image/png;base64,...``)."""
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Part):
    type: Literal["image_url"]
    image_url: ImageUrl


class InputAudio(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")

    data: str = Field(min_length=1)
    """Base64-encoded audio."""
    format: str = Field(min_length=1)


class AudioPart(_Part):
    type: Literal["input_audio"]
    input_audio: InputAudio


class FileData(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")

    file_data: str | None = None
    """The file as a data URL (``data:application/pdf;base64,...``)."""
    file_id: str | None = None
    filename: str | None = None


class FilePart(_Part):
    type: Literal["file"]
    file: FileData


PART_TYPES = ("text", "image_url", "input_audio", "file")

ContentPart = Annotated[TextPart | ImagePart | AudioPart | FilePart, Field(discriminator="type")]
"""A part of a message's content: text, an image, audio or a file."""


def _content_kind(value: Any) -> str:
    if isinstance(value, str):
        return "string"
    return "null" if value is None else "parts"


Content = Annotated[
    Annotated[str, Tag("string")]
    | Annotated[list[ContentPart], Tag("parts")]
    | Annotated[None, Tag("null")],
    Discriminator(_content_kind),
]
"""A message's content: text, a list of parts, or null (one branch checked, so one
error for what is wrong with it)."""
CONTENT_TAGS = frozenset({"string", "parts", "null"})


class FunctionCall(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    arguments: str
    """JSON text, as the model wrote it."""


class ToolCall(BaseModel):
    """A tool call of an assistant message in the history, as the model made it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    """A message of the chat history, or one sent to a model.

    ``content`` is text or a list of parts (text, ``image_url``, ``input_audio``,
    ``file``); an assistant message may instead carry only ``tool_calls`` (its content
    ``null``), and its ``reasoning`` and signed ``reasoning_details`` for providers that
    take them back; a ``tool`` message answers the call ``tool_call_id``. Other fields
    are ignored, as they always were.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    role: Role
    content: Content
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[ToolCall] | None = None
    refusal: str | None = None
    reasoning: str | None = None
    reasoning_details: list[dict[str, Any]] | None = None

    @model_validator(mode="before")
    @classmethod
    def _known_parts(cls, data: Any) -> Any:
        """One clear error for content that is neither text, parts nor null, and for a
        part of a type not known (rather than one per member of the union)."""
        content = data.get("content") if isinstance(data, Mapping) else None
        if content is None or isinstance(content, str):
            return data
        if not isinstance(content, list):
            raise ValueError("content must be text, a list of parts, or null")
        for number, part in enumerate(content):
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind not in PART_TYPES:
                raise ValueError(
                    f"content[{number}] is not a part of a known type (an object whose "
                    f"type is one of {', '.join(PART_TYPES)}): {kind or part!r}"[:300]
                )
        return data

    @model_validator(mode="after")
    def _content_or_calls(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content may be null only in an assistant message with tool_calls")
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError(f"only an assistant message has tool_calls, not a {self.role!r} one")
        return self

    @property
    def text(self) -> str:
        """The message's text: its content, or its text parts run together."""
        content = self.content
        if content is None:
            return ""
        if isinstance(content, str):
            return content
        return "".join(part.text for part in content if isinstance(part, TextPart))

    def size(self) -> int:
        """What the message weighs in a model's request, in characters: its text, its
        parts' data (an image's data URL counts whole) and its tool calls."""
        content = self.content
        size = len(content) if isinstance(content, str) else 0
        if isinstance(content, list):
            size += sum(_part_size(part) for part in content)
        for call in self.tool_calls or ():
            size += len(call.function.name) + len(call.function.arguments)
        return size

    def to_openai(self) -> dict[str, Any]:
        """The message as the chat-completions API takes it (no ``reasoning``: OpenAI's
        API and DeepSeek's refuse it back)."""
        message = self.model_dump(exclude_none=True, exclude={"reasoning", "reasoning_details"})
        if self.content is None:
            message["content"] = None
        return message


def _part_size(part: _Part) -> int:
    if isinstance(part, TextPart):
        return len(part.text)
    if isinstance(part, ImagePart):
        return len(part.image_url.url)
    if isinstance(part, AudioPart):
        return len(part.input_audio.data)
    if isinstance(part, FilePart):
        return len(part.file.file_data or "") + len(part.file.file_id or "")
    return 0
