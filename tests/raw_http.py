"""A strict HTTP/1.1 client over a raw socket: it sends exact bytes and reads answers byte by byte.

Its own reader, not llhttp, so a test's oracle does not share the router's parser. It holds the
router to what the router itself writes: CRLF line endings only, `HTTP/1.1 <3 digits>` status
lines, one framing per answer (a decimal Content-Length, or `Transfer-Encoding: chunked` with
bare hex chunk sizes, no chunk extensions and no trailer fields), and no field repeated where a
test reads it.
"""

from __future__ import annotations

import errno
import json
import re
import socket
from dataclasses import dataclass
from typing import Any

STATUS_LINE = re.compile(rb"^HTTP/1\.1 (\d{3}) [^\r\n]*$")
_CHUNK_SIZE = re.compile(rb"^[0-9a-fA-F]+$")
_DECIMAL = re.compile(r"^[0-9]+$")


class Cut(AssertionError):
    """The connection ended before the answer was complete (or before any answer came)."""


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]  # names lowercased, in order
    body: bytes = b""

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]

    def header(self, name: str) -> str | None:
        values = self.values(name)
        assert len(values) <= 1, f"{name} repeated in the answer: {values}"
        return values[0] if values else None

    def closes(self) -> bool:
        return "close" in (self.header("connection") or "").lower()

    def json(self) -> Any:
        return json.loads(self.body)


class RawConnection:
    """One client connection to 127.0.0.1:`port`; every wait for a byte is bounded by `timeout`."""

    def __init__(self, port: int, timeout: float) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.timeout = timeout
        self.buffer = b""
        self.eof = False

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def fill(self) -> bool:
        """Read more bytes into the buffer; False once the peer closed (FIN or reset)."""
        if self.eof:
            return False
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise AssertionError(
                f"nothing within {self.timeout}s; buffered {self.buffer[:200]!r}"
            ) from None
        except OSError as exc:
            if exc.errno != errno.ECONNRESET:
                raise
            data = b""
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True

    def wait_for_bytes(self) -> None:
        """Until the first byte of an answer is here; Cut if the connection ends first."""
        while not self.buffer:
            if not self.fill():
                raise Cut("closed without answering")

    def read_answer(self, head: bool = False) -> Answer:
        """The next answer (interim 1xx answers included; `head`: the answer to a HEAD request,
        which has no body); Cut if the connection ends before it is complete."""
        self.wait_for_bytes()
        status_line = self._line()
        match = STATUS_LINE.match(status_line)
        assert match, f"bad status line {status_line!r}"
        answer = Answer(int(match.group(1)), [])
        while line := self._line():
            name, colon, value = line.partition(b":")
            assert colon and name and name.strip() == name, f"bad header line {line!r}"
            answer.headers.append((name.decode("latin-1").lower(), value.strip().decode("latin-1")))
        answer.body = self._body(answer, head)
        return answer

    def expect_closed(self) -> None:
        """The peer must close now, sending nothing more."""
        while self.fill():
            pass
        assert not self.buffer, f"bytes after the last answer: {self.buffer[:300]!r}"

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if not self.fill():
                raise Cut(f"closed mid-line: {self.buffer[:200]!r}")
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        assert b"\n" not in line and b"\r" not in line, f"bare CR/LF in answer line {line!r}"
        return line

    def _exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not self.fill():
                raise Cut(f"closed after {len(self.buffer)} of {size} body bytes")
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def _body(self, answer: Answer, head: bool) -> bytes:
        length = answer.header("content-length")
        coding = answer.header("transfer-encoding")
        assert length is None or coding is None, f"both framings in one answer: {answer.headers}"
        if head or answer.status < 200 or answer.status in (204, 304):
            return b""
        if coding is not None:
            assert coding == "chunked", f"answer coding {coding!r}"
            return self._chunked_body()
        if length is not None:
            assert _DECIMAL.match(length), f"answer Content-Length {length!r}"
            return self._exactly(int(length))
        while self.fill():  # delimited by the close
            pass
        body, self.buffer = self.buffer, b""
        return body

    def _chunked_body(self) -> bytes:
        body = b""
        while True:
            size_line = self._line()
            assert _CHUNK_SIZE.match(size_line), f"bad chunk size line {size_line!r}"
            size = int(size_line, 16)
            if not size:
                break
            body += self._exactly(size)
            assert self._line() == b"", "chunk data not followed by CRLF"
        assert self._line() == b"", "trailer fields sent to the client"
        return body
