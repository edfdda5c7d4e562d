"""Server-sent events, sans-I/O: the bytes of a ``text/event-stream`` body in, in
whatever pieces the reads return, the ``data`` of each event out.

As the WHATWG HTML standard reads an event stream: lines end at CRLF, LF or CR and
nowhere else (not at U+2028, U+2029 or U+0085, which a model's text may hold unescaped
inside a JSON string); a CR that ends one read and an LF that opens the next are one
line end; a BOM opening the stream is dropped; ``data:`` loses one leading space, and
the data lines of an event are joined with LF; an empty line ends the event. Comments
and the ``event``, ``id`` and ``retry`` fields carry nothing a reply needs here.
"""

from __future__ import annotations

_BOM = b"\xef\xbb\xbf"


class EventStreamDecoder:
    """Feed it an event stream's bytes with :meth:`feed` as they arrive; each call
    returns the ``data`` of the events those bytes completed, UTF-8 decoded (an invalid
    sequence becomes U+FFFD). :meth:`end` returns what the stream's end completes."""

    __slots__ = ("_after_cr", "_data", "_started", "_unended")

    def __init__(self) -> None:
        # The pieces of a line whose end has not arrived yet, joined once it has: a
        # long line in many small reads costs its length, not its length squared.
        self._unended: list[bytes] = []
        self._data: bytes | None = None  # the event's data so far; None: no data line yet
        self._after_cr = False  # the last piece ended with CR: an LF opening the next is its
        self._started = False  # past where a BOM may be

    def feed(self, piece: bytes) -> list[str]:
        """The data of each event that ``piece``, the next bytes of the stream, ends."""
        if self._after_cr and piece:
            self._after_cr = False
            if piece[0] == 10:  # LF
                piece = piece[1:]
        if not piece:
            return []
        if self._unended:
            self._unended.append(piece)
            if b"\n" not in piece and b"\r" not in piece:
                return []
            piece = b"".join(self._unended)
            self._unended.clear()
        if not self._started:
            if len(piece) < len(_BOM) and _BOM.startswith(piece):
                self._unended.append(piece)  # maybe a BOM, maybe not: wait for more
                return []
            self._started = True
            if piece.startswith(_BOM):
                piece = piece[len(_BOM) :]
                if not piece:
                    return []
        # bytes.splitlines() ends lines at CRLF, LF and CR alone (str's also at U+2028,
        # U+2029, U+0085 and more), in one pass whatever the stream uses.
        lines = piece.splitlines()
        last = piece[-1]
        if last == 13:  # CR: an LF opening the next piece is part of this line end
            self._after_cr = True
        elif last != 10:  # no LF either: the last line goes on in the next piece
            self._unended.append(lines.pop())
        return self._read(lines)

    def end(self) -> list[str]:
        """The data of the event the stream's end cuts short, if it has any: a last line
        without its end is read as a line, and an event without its empty line is
        dispatched (servers that end their stream so are read whole)."""
        lines = [b"".join(self._unended), b""] if self._unended else [b""]
        self._unended.clear()
        self._after_cr = False
        return self._read(lines)

    def _read(self, lines: list[bytes]) -> list[str]:
        events: list[str] = []
        data = self._data
        for line in lines:
            if not line:
                if data is not None:
                    events.append(data.decode("utf-8", "replace"))
                    data = None
                continue
            if line.startswith(b"data: "):
                value = line[6:]
            elif line.startswith(b"data:"):
                value = line[5:]
            elif line == b"data":
                value = b""
            else:
                continue  # a comment, another field, or a line that is no field
            data = value if data is None else data + b"\n" + value
        self._data = data
        return events
