"""Reads ``/proc`` (and sysfs) files that a collector reads again every sample, for as little CPU
as possible.

A :class:`ProcFile` keeps its file open and reads it again from offset 0 with ``pread``: the
kernel generates a ``/proc`` file anew for a read that starts at 0, so the content is fresh, and
the open and close are saved. At 1 Hz, with cold caches, opening a ``/proc`` file costs more than
reading it (about 80 µs against 50 µs here), and an agent reads several every second.

Most of these files are made by the kernel in one go (``single_open``: ``/proc/stat``,
``/proc/meminfo``, ``/proc/loadavg``, ``/proc/<pid>/stat``; a sysfs attribute such as
``/sys/block/<disk>/stat``): one read with a larger buffer returns all of it, so a read that does
not fill the buffer is the whole file and the read that would return nothing is saved too
(``whole_in_one_read``). Files made record by record (``/proc/diskstats``, ``/proc/net/dev``)
come back one kernel buffer at a time, and only an empty read says that they are done.
"""

from __future__ import annotations

import os

# The first read asks for this much; a file that is larger takes more reads, not a larger buffer.
_READ_BYTES = 32 * 1024


class ProcFile:
    """One ``/proc`` file, opened on the first :meth:`read` and kept open until :meth:`close`.

    With ``keep_open=False`` every read opens and closes the file (for callers that may have
    more of these than they should hold file descriptors). ``whole_in_one_read=True`` is for
    files the kernel makes in one go (see the module's docstring): a short read ends the file.
    """

    __slots__ = ("_fd", "keep_open", "path", "whole_in_one_read")

    def __init__(self, path: str, *, keep_open: bool = True, whole_in_one_read: bool = False) -> None:
        self.path = path
        self.keep_open = keep_open
        self.whole_in_one_read = whole_in_one_read
        self._fd: int | None = None

    def read(self) -> bytes:
        """The file's current content, whole. Raises ``OSError`` (``ProcessLookupError`` when a
        kept ``/proc/<pid>`` file's process is gone); the next read opens the file again."""
        fd = self._fd
        if fd is None:
            fd = os.open(self.path, os.O_RDONLY)
            if self.keep_open:
                self._fd = fd
        try:
            chunk = os.pread(fd, _READ_BYTES, 0)
            if not chunk or (self.whole_in_one_read and len(chunk) < _READ_BYTES):
                return chunk
            # A short read of a record-by-record file does not mean the end: only an empty one does.
            chunks = [chunk]
            offset = len(chunk)
            while chunk := os.pread(fd, _READ_BYTES, offset):
                chunks.append(chunk)
                offset += len(chunk)
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        except OSError:
            self.close()
            raise
        finally:
            if not self.keep_open:
                os.close(fd)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:
        self.close()
