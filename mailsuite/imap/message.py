"""Lazy access to one stored message for FETCH and SEARCH: header block, ranges, decoded text.

Messages are stored with CRLF line ends, so byte offsets in the file are IMAP octet offsets.
Big bodies are never loaded whole to answer ``BODY[]``/``BODY[TEXT]``: :meth:`Message.iter_range`
streams them in chunks; ranges up to ``WHOLE_READ`` octets are read in one go (:meth:`Message.read_range`).
MIME structure (numbered parts, ENVELOPE, BODYSTRUCTURE) is mailsuite.mime's job (see mimeview.py).
"""

from __future__ import annotations

from typing import BinaryIO, Callable, Iterator

CHUNK = 65536
WHOLE_READ = 256 * 1024  # ranges up to this size are read with one read() (FETCH of small messages)


class Message:
    """One message: ``opener`` opens its file, ``header_loader`` gives its header block (the store's
    header cache, so FETCH/SEARCH of headers does not read message files)."""

    def __init__(self, opener: Callable[[], BinaryIO], size: int, header_loader: Callable[[], bytes],
                 date_loader: Callable[[], float] | None = None,
                 range_reader: Callable[[int, int], bytes] | None = None) -> None:
        self._opener = opener
        self._range_reader = range_reader   # (start, length) -> bytes, cheaper than opener + read
        self.size = size
        self._header_loader = header_loader
        self._date_loader = date_loader
        self._header: bytes | None = None
        self._raw: bytes | None = None

    def raw(self) -> bytes:
        """The whole message (for MIME parsing; cached)."""
        if self._raw is None:
            with self._opener() as f:
                self._raw = f.read()
        return self._raw

    def internaldate(self) -> float:
        """The INTERNALDATE (Unix time) when the index does not know it yet (the store learns it from
        the file on first use)."""
        if self._date_loader is None:
            raise OSError("internal date unknown")
        return self._date_loader()

    def header(self) -> bytes:
        """The header block including the empty line that ends it (RFC 3501 §6.4.5 HEADER)."""
        if self._header is None:
            self._header = self._header_loader()
        return self._header

    def iter_range(self, start: int, length: int) -> Iterator[bytes]:
        """Bytes ``[start, start+length)`` of the file, in chunks."""
        if self._raw is not None:
            for off in range(start, start + length, CHUNK):
                n = min(CHUNK, start + length - off)
                data = self._raw[off : off + n]
                yield data if len(data) == n else data + b" " * (n - len(data))  # shrank: pad (§4.3)
            return
        with self._opener() as f:
            f.seek(start)
            left = length
            while left > 0:
                data = f.read(min(CHUNK, left))
                if not data:
                    # The file shrank under us: keep the announced literal length (RFC 3501 §4.3).
                    data = b" " * left
                left -= len(data)
                yield data

    def read_range(self, start: int, length: int) -> bytes:
        """Bytes ``[start, start+length)`` of the file with one open and one read (for small ranges).

        Padded with spaces if the file shrank under us, as :meth:`iter_range` does (RFC 3501 §4.3)."""
        if self._raw is not None:
            data = self._raw[start : start + length]
        elif length <= 0:
            return b""
        elif self._range_reader is not None:
            data = self._range_reader(start, length)
        else:
            with self._opener() as f:
                if start:
                    f.seek(start)
                data = f.read(length)
        if len(data) < length:
            data += b" " * (length - len(data))
        return data
