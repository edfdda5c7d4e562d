"""Template parsing and safe rendering (pure units)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llm_worker.jobs.templates import (
    Assistant,
    InsertItem,
    ModelStream,
    PipelineStream,
    Placeholder,
    TemplateError,
    TemplateMessage,
    check_placeholders,
    compile_text,
    render,
)


def test_plain_placeholders_are_replaced() -> None:
    assert render("Q: {query}!", {"query": "why?"}) == "Q: why?!"
    assert render("{a}{b}", {"a": "1", "b": "2"}) == "12"
    assert render("no placeholders", {}) == "no placeholders"
    assert render("", {}) == ""


def test_doubled_braces_are_literal() -> None:
    assert render("{{query}}", {"query": "x"}) == "{query}"
    assert render('JSON: {{"a": {query}}}', {"query": "1"}) == 'JSON: {"a": 1}'
    assert render("}}{{", {}) == "}{"


@pytest.mark.parametrize(
    "text",
    [
        "{query.__class__}",
        "{query.__class__.__mro__[1].__subclasses__()}",
        "{history[0]}",
        "{0}",
        "{}",
        "{query!r}",
        "{query:>10}",
        "{ query }",
        "{query-1}",
        '{"a": 1}',
    ],
)
def test_anything_but_a_plain_name_is_rejected(text: str) -> None:
    with pytest.raises(TemplateError, match="invalid placeholder"):
        compile_text(text)


@pytest.mark.parametrize(("text", "brace", "at"), [("a { b", "{", 2), ("a } b", "}", 2)])
def test_lone_braces_are_rejected(text: str, brace: str, at: int) -> None:
    with pytest.raises(TemplateError, match=f"unmatched '\\{brace}' at character {at}"):
        compile_text(text)


@pytest.mark.parametrize(
    "value",
    ["{query}", "{query.__class__}", "{0}", "{{", "}", "{previous_stream_output}", "%s {}"],
)
def test_values_are_inserted_verbatim_never_rendered_again(value: str) -> None:
    assert render("<{query}>", {"query": value, "previous_stream_output": "SECRET"}) == (
        f"<{value}>"
    )


def test_compiled_parts_and_names() -> None:
    compiled = compile_text("Hi {name}, {{ok}} {query}")
    assert compiled.parts == ("Hi ", Placeholder("name"), ", {ok} ", Placeholder("query"))
    assert compiled.names == {"name", "query"}


def test_check_placeholders_names_the_unknown_one_and_where() -> None:
    check_placeholders("{query} {lang}", {"query", "lang"}, "here")
    with pytest.raises(TemplateError) as raised:
        check_placeholders("{query} {lnag}", {"query", "lang"}, "streams[0]")
    assert str(raised.value) == (
        "streams[0]: unknown placeholder {lnag} (known here: {lang}, {query})"
    )


def test_streams_are_model_calls_or_pipelines() -> None:
    assistant = Assistant.model_validate(
        {
            "streams": [
                {"pipeline": "echo", "mode": "loud"},
                {
                    "provider": "openai",
                    "settings": {"model": "m"},
                    "messages": [
                        {"role": "system", "content": "s"},
                        {"insert": "history", "last": 2},
                    ],
                },
            ]
        }
    )
    pipeline, model = assistant.streams
    assert isinstance(pipeline, PipelineStream)
    assert pipeline.options == {"mode": "loud"}
    assert isinstance(model, ModelStream)
    assert isinstance(model.messages[0], TemplateMessage)
    assert isinstance(model.messages[1], InsertItem)
    assert model.messages[1].options == {"last": 2}


def test_a_model_stream_needs_messages_and_knows_its_fields() -> None:
    with pytest.raises(ValidationError):
        Assistant.model_validate({"streams": [{"provider": "openai", "messages": []}]})
    with pytest.raises(ValidationError, match="setings"):
        Assistant.model_validate(
            {"streams": [{"provider": "openai", "setings": {}, "messages": [{"insert": "x"}]}]}
        )


def test_message_roles_are_the_chat_roles() -> None:
    for role in ("system", "user", "assistant", "function", "tool"):
        TemplateMessage(role=role, content="x")
    with pytest.raises(ValidationError):
        TemplateMessage.model_validate({"role": "admin", "content": "x"})
