"""Bytes of a known size that arrive in pieces, so an upload is written to the guest as it
comes and is never held whole (by the CLI reading a local file, by the agent reading the
network). A stream is read once, front to back; the writer asks for windows of it."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from typing import BinaryIO

PIECE = 1 << 20  # what a file-backed stream reads at a time


class StreamError(ValueError):
    """The source ended before, or went on after, the size it announced."""


class ByteStream:
    """SIZE bytes from PIECES (an iterator of bytes-like pieces of any length)."""

    def __init__(self, size: int, pieces: Iterator[bytes],
                 rewind: Callable[[], Iterator[bytes]] | None = None) -> None:
        if size < 0:
            raise ValueError("a stream's size cannot be negative")
        self.size = size
        self._pieces = pieces
        self._rewind = rewind
        self._left = memoryview(b"")
        self.consumed = 0  # bytes handed out by read()
        self._progress: Callable[[int], None] | None = None

    @classmethod
    def of_bytes(cls, data: bytes | bytearray | memoryview) -> ByteStream:
        view = memoryview(data).cast("B")
        return cls(len(view), iter((view,)), rewind=lambda: iter((view,)))

    @classmethod
    def of_file(cls, file: BinaryIO, size: int | None = None) -> ByteStream:
        """The rest of an open file from its current position; SIZE defaults to what is left
        of a regular file. Rewindable when the file can seek."""
        start = file.tell() if file.seekable() else 0
        if size is None:
            size = os.fstat(file.fileno()).st_size - start

        def pieces() -> Iterator[bytes]:
            while chunk := file.read(PIECE):
                yield chunk

        def rewind() -> Iterator[bytes]:
            file.seek(start)
            return pieces()

        return cls(size, pieces(), rewind=rewind if file.seekable() else None)

    def on_progress(self, callback: Callable[[int], None] | None) -> ByteStream:
        """Call CALLBACK(bytes consumed so far) as the stream is read (for progress bars)."""
        self._progress = callback
        return self

    def read(self, n: int) -> bytes:
        """The next N bytes (fewer only at the end of the stream). Raises StreamError when
        the source ends early or holds more than it announced."""
        n = min(n, self.size - self.consumed)
        out = bytearray()
        while len(out) < n:
            if not self._left:
                piece = next(self._pieces, None)
                if piece is None:
                    raise StreamError(f"the data ended after {self.consumed + len(out)} of "
                                      f"{self.size} bytes")
                self._left = memoryview(piece).cast("B")
            take = self._left[:n - len(out)]
            out += take
            self._left = self._left[len(take):]
        self.consumed += n
        if self.consumed == self.size and (self._left or next(self._pieces, None)):
            raise StreamError(f"the data goes on past the {self.size} bytes announced")
        if self._progress is not None and n:
            self._progress(self.consumed)
        return bytes(out)

    def rewind(self) -> bool:
        """Start again from the first byte, if the source allows it (a retry after a
        refusal). Whether it could."""
        if self._rewind is None:
            return self.consumed == 0 and not self._left
        self._pieces, self._left, self.consumed = self._rewind(), memoryview(b""), 0
        return True

    def chunks(self, size: int) -> Iterator[bytes]:
        """The whole stream in pieces of SIZE bytes (the last one shorter)."""
        while self.consumed < self.size:
            yield self.read(size)

    def readall(self) -> bytes:
        """Everything left, at once (for the few callers that need it whole)."""
        buffer = io.BytesIO()
        for chunk in self.chunks(PIECE):
            buffer.write(chunk)
        return buffer.getvalue()

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"ByteStream({self.size} bytes, {self.consumed} read)"
