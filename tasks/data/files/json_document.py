"""The records of one JSON document (a top-level list of objects, or {"data": [...]}) decoded
one element at a time from a file read CHUNK_CHARS at a time, never parsed whole.

    file ──read a chunk──► text buffer ──json's C decoder, one value at a time──► element
         the list's brackets and commas (and an object's keys around "data") checked here

Memory: the buffer (a chunk, or one element if it is bigger) and the elements the caller
keeps, instead of the whole document as Python objects (~20x its size in bytes). Errors are
json.load's: the decoder's message with the line and column in the file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from multilora_pipeline.data_specs.errors import DataError

# Characters read at a time (a value longer than the buffer makes the next read bigger).
CHUNK_CHARS = 1 << 20
_SPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace
_DECODER = json.JSONDecoder()


class _Reader:
    """A JSON text read a chunk at a time: the next character past whitespace, one value
    decoded whole, and errors that say where in the file they are."""

    def __init__(self, fh: TextIO, path: Path):
        self.fh, self.path = fh, path
        self.buf, self.pos, self.eof = "", 0, False
        self.lines_before = 0  # line breaks in the text dropped from the buffer's front
        self.columns_before = 0  # characters of the buffer's first line dropped already

    def _more(self) -> bool:
        """Drop what is consumed and read more (at least as much as is pending: a long value
        doubles the read instead of being decoded again per chunk); False at the end."""
        if self.eof:
            return False
        chunk = self.fh.read(max(CHUNK_CHARS, len(self.buf) - self.pos))
        if not chunk:  # the buffer stays as it is: an error's position still points into it
            self.eof = True
            return False
        dropped = self.buf[: self.pos]
        breaks = dropped.count("\n")
        self.lines_before += breaks
        # The column of the buffer's first character, for an error on a line begun before it.
        after_break = len(dropped) - dropped.rfind("\n") - 1
        self.columns_before = after_break if breaks else self.columns_before + len(dropped)
        self.buf, self.pos = self.buf[self.pos :] + chunk, 0
        return True

    def peek(self) -> str:
        """The next character past whitespace ('' at the end of the file)."""
        while True:
            self.pos = _SPACE.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._more():
                return ""

    def take(self, chars: str, expecting: str) -> str:
        """The next character, which must be one of `chars`."""
        char = self.peek()
        if not char or char not in chars:
            raise self.error(f"Expecting {expecting}", self.pos)
        self.pos += 1
        return char

    def value(self) -> Any:
        """The next JSON value, decoded whole."""
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as err:
                if not self._more():
                    raise self.error(err.msg, err.pos) from None
                continue
            # A number at the buffer's end may go on in the next chunk.
            if end < len(self.buf) or not self._more():
                self.pos = end
                return value

    def error(self, message: str, at: int) -> DataError:
        line = self.lines_before + self.buf.count("\n", 0, at) + 1
        last_break = self.buf.rfind("\n", 0, at)
        column = at - last_break if last_break >= 0 else self.columns_before + at + 1
        return DataError(
            f"malformed or truncated JSON: {message} (column {column})",
            where=f"{self.path}, line {line}",
            fix="fix the JSON (was the file cut off?)",
        )


def document_records(path: Path) -> Iterator[dict]:
    """The document's records in order; a DataError for malformed JSON, a top level that is
    neither a list nor an object with a "data" list, or an element that is not an object."""
    with path.open(encoding="utf-8-sig") as fh:
        doc = _Reader(fh, path)
        first = doc.peek()
        if first == "[":
            yield from _elements(doc)
        elif first == "{":
            yield from _data_elements(doc)
        else:
            _wrong_top_level(path, type(doc.value()).__name__)
        if doc.peek():
            raise doc.error("Extra data", doc.pos)


def _elements(doc: _Reader) -> Iterator[dict]:
    """The objects of the list that starts here, checked one by one."""
    doc.take("[", "'['")
    if doc.peek() == "]":
        doc.pos += 1
        return
    index = 0
    while True:
        obj, index = doc.value(), index + 1
        if not isinstance(obj, dict):
            raise DataError(
                f"element {index} is a {type(obj).__name__}, expected an object",
                where=f"{doc.path}, row {index}",
                fix="every element must be a JSON object",
            )
        yield obj
        if doc.take(",]", "',' delimiter") == "]":
            return


def _data_elements(doc: _Reader) -> Iterator[dict]:
    """The elements of the object's "data" list; its other members are read and skipped."""
    doc.take("{", "'{'")
    if doc.peek() == "}":  # {}: no "data" at all
        _wrong_top_level(doc.path, "dict")
    streamed = False
    while True:
        at = doc.pos
        key = doc.value()
        if not isinstance(key, str):
            raise doc.error("Expecting property name enclosed in double quotes", at)
        doc.take(":", "':' delimiter")
        if key == "data" and doc.peek() == "[" and not streamed:
            yield from _elements(doc)
            streamed = True
        elif key == "data":
            raise DataError(
                '"data" appears twice, or is not a list',
                where=str(doc.path),
                fix='give the document one "data" list of objects',
            )
        else:
            doc.value()
        if doc.take(",}", "',' delimiter") == "}":
            break
    if not streamed:
        _wrong_top_level(doc.path, "dict")


def _wrong_top_level(path: Path, kind: str) -> None:
    raise DataError(
        f'the top level is a JSON {kind}; expected a list of objects or {{"data": [...]}}',
        where=str(path),
        fix="wrap the records in a list, or use jsonl with one object per line",
    )
