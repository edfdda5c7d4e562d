"""The server-sent events decoder, pure: what the WHATWG standard says an event stream
holds, however its bytes are split across reads."""

from __future__ import annotations

import time

import orjson
import pytest

from llm_worker.providers.sse import EventStreamDecoder

SEPARATORS = ["\u2028", "\u2029", "\u0085"]
LINE_ENDS = ["\n", "\r\n", "\r"]


def decode(*pieces: bytes) -> list[str]:
    decoder = EventStreamDecoder()
    events = [data for piece in pieces for data in decoder.feed(piece)]
    return events + decoder.end()


def every_split(stream: bytes) -> list[tuple[bytes, ...]]:
    """``stream`` whole, cut in two at every offset, in three at every pair of offsets
    (short streams), and in single bytes."""
    splits: list[tuple[bytes, ...]] = [(stream,)]
    splits += [(stream[:i], stream[i:]) for i in range(len(stream) + 1)]
    if len(stream) <= 120:
        splits += [
            (stream[:i], stream[i:j], stream[j:])
            for i in range(len(stream) + 1)
            for j in range(i, len(stream) + 1)
        ]
    splits.append(tuple(stream[i : i + 1] for i in range(len(stream))))
    return splits


def stream_of(texts: list[str], line_end: str) -> bytes:
    """An OpenAI-style stream of ``texts`` as orjson writes it (nothing escaped beyond
    what JSON requires), its lines ended by ``line_end``, then ``[DONE]``."""
    events = [b"data: " + orjson.dumps({"choices": [{"delta": {"content": t}}]}) for t in texts]
    events.append(b"data: [DONE]")
    end = line_end.encode()
    return b"".join(event + end + end for event in events)


def texts_of(events: list[str]) -> list[str]:
    assert events[-1] == "[DONE]"
    return [orjson.loads(data)["choices"][0]["delta"]["content"] for data in events[:-1]]


@pytest.mark.parametrize("line_end", LINE_ENDS, ids=["lf", "crlf", "cr"])
@pytest.mark.parametrize("separator", SEPARATORS, ids=["u2028", "u2029", "u0085"])
def test_separators_in_json_strings_stay_in_their_event_at_every_split(
    separator: str, line_end: str
) -> None:
    texts = [f"a{separator}b", separator, f"{separator}{separator}x", "caf\u00e9 \U0001f600"]
    stream = stream_of(texts, line_end)
    assert separator.encode() in stream  # sent raw, not escaped
    for pieces in every_split(stream):
        assert texts_of(decode(*pieces)) == texts, pieces


@pytest.mark.parametrize("line_end", LINE_ENDS, ids=["lf", "crlf", "cr"])
def test_every_line_end_gives_the_same_events(line_end: str) -> None:
    stream = (
        ": a comment\n"
        "event: message\n"
        "id: 7\n"
        "retry: 1000\n"
        "data: first\n"
        "\n"
        "data:no space\n"
        "data:  two spaces\n"
        "\n"
        "data\n"
        "\n"
        "data:\n"
        "data:\n"
        "\n"
    ).replace("\n", line_end)
    expected = ["first", "no space\n two spaces", "", "\n"]
    for pieces in every_split(stream.encode()):
        assert decode(*pieces) == expected, pieces


def test_mixed_line_ends_and_a_cr_lf_split_across_reads_are_one_line_end() -> None:
    stream = b"data: a\r\ndata: b\rdata: c\n\r\ndata: d\r\r"
    assert decode(stream) == ["a\nb\nc", "d"]
    # CR at the end of one read, LF at the start of the next: one line end, not two
    # (two would be an empty line, dispatching "a" alone).
    assert decode(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n") == ["a\nb"]
    # An LF after a CR that was not at the end of the previous read is a line end.
    assert decode(b"data: a\r\r", b"\n") == ["a"]
    assert decode(b"data: a\r", b"\r", b"\n", b"data: b\n\n") == ["a", "b"]


def test_multi_line_data_is_joined_with_lf() -> None:
    stream = b'data: {"a":\ndata: 1}\n\n'
    for pieces in every_split(stream):
        events = decode(*pieces)
        assert events == ['{"a":\n1}']
        assert orjson.loads(events[0]) == {"a": 1}


def test_comments_and_other_fields_make_no_event() -> None:
    assert decode(b": ping\n\nevent: ping\n\nid: 1\nretry: 5\n\n:\n\n") == []
    assert decode(b"datum: x\n\nDATA: y\n\ndata : z\n\n") == []
    # Anthropic's shape: event then data; the event name is not part of the data.
    assert decode(b'event: message_stop\ndata: {"type":"message_stop"}\n\n') == [
        '{"type":"message_stop"}'
    ]


def test_an_event_the_stream_ends_without_its_empty_line_is_dispatched() -> None:
    for stream in (b"data: [DONE]", b"data: [DONE]\n", b"data: [DONE]\r", b"data: [DONE]\r\n"):
        for pieces in every_split(stream):
            assert decode(*pieces) == ["[DONE]"], pieces
    assert decode(b"data: a\n\ndata: b") == ["a", "b"]
    assert decode(b"") == []
    assert decode(b"\n\n\r\n") == []
    assert decode(b": only a comment") == []


def test_a_bom_opening_the_stream_is_dropped_and_only_there() -> None:
    bom = b"\xef\xbb\xbf"
    for pieces in every_split(bom + b"data: x\n\n"):
        assert decode(*pieces) == ["x"], pieces
    # A BOM anywhere else is data (or makes a line no field).
    assert decode(b"data: " + bom + b"x\n\n") == ["\ufeffx"]
    assert decode(b"data: x\n\n" + bom + b"data: y\n\n") == ["x"]
    # A stream that only looks like a BOM at first.
    assert decode(b"\xef", b"data: x\n\n") == []
    assert decode(b"d", b"ata: x\n\n") == ["x"]


def test_multi_byte_characters_split_across_reads_decode_whole() -> None:
    text = "\u00e9\u20ac\U0001f600\u2028\u0085"
    stream = f"data: {text}\n\n".encode()
    for pieces in every_split(stream):
        assert decode(*pieces) == [text], pieces


def test_invalid_utf8_becomes_replacement_characters_in_its_event_alone() -> None:
    assert decode(b"data: a\xffb\n\ndata: c\xe2\x80\n\ndata: d\n\n") == [
        "a\ufffdb",
        "c\ufffd",
        "d",
    ]


def test_empty_reads_change_nothing() -> None:
    decoder = EventStreamDecoder()
    events = []
    for piece in (b"", b"data: a\r", b"", b"\ndata: b\r", b"", b"\n", b"", b"\n", b""):
        events += decoder.feed(piece)
    assert events + decoder.end() == ["a\nb"]


def test_a_decoder_reads_one_stream_after_another_piece_by_piece() -> None:
    decoder = EventStreamDecoder()
    assert decoder.feed(b"data: 1\n") == []
    assert decoder.feed(b"\ndata: 2\n\ndata: 3") == ["1", "2"]
    assert decoder.feed(b"\n\n") == ["3"]
    assert decoder.end() == []


def test_a_long_line_in_single_bytes_costs_its_length_not_its_square() -> None:
    # 800 kB a byte a read: about 1 s of CPU here when the pieces are joined once, 25 s
    # when each read copies the line so far (the bound leaves a loaded machine room).
    size = 800_000
    line = b"data: " + b"x" * size
    decoder = EventStreamDecoder()
    started = time.process_time()
    for index in range(len(line)):
        assert not decoder.feed(line[index : index + 1])
    assert decoder.feed(b"\n\n") == ["x" * size]
    assert time.process_time() - started < 6
