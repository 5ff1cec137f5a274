"""Bounded capture of a command's output stream.

Keeps the first and the last part of a stream up to a cap and counts what was dropped in
between, in time linear in the output size (chunks are appended, never concatenated).
"""

from __future__ import annotations

from collections import deque


class BoundedOutput:
    """Collects bytes, keeping at most ``cap`` of them: the head and the tail of the stream."""

    def __init__(self, cap: int) -> None:
        if cap < 0:
            raise ValueError("cap must be >= 0")
        self.cap = cap
        self._head_cap = cap - cap // 2
        self._tail_cap = cap // 2
        self._head = bytearray()
        self._tail: deque[bytes] = deque()
        self._tail_len = 0
        self.total = 0

    def write(self, data: bytes) -> None:
        """Append a chunk."""
        self.total += len(data)
        room = self._head_cap - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if not data or self._tail_cap == 0:
            return
        if len(data) >= self._tail_cap:
            self._tail.clear()
            self._tail.append(bytes(data[-self._tail_cap :]))
            self._tail_len = self._tail_cap
            return
        self._tail.append(bytes(data))
        self._tail_len += len(data)
        while self._tail_len - len(self._tail[0]) >= self._tail_cap:
            self._tail_len -= len(self._tail.popleft())

    @property
    def dropped(self) -> int:
        """Bytes produced but not kept."""
        return self.total - len(self._head) - min(self._tail_len, self._tail_cap)

    @property
    def truncated(self) -> bool:
        """Whether anything was dropped."""
        return self.dropped > 0

    def text(self) -> str:
        """The kept bytes as UTF-8 (invalid sequences replaced), with a marker where bytes were dropped."""
        tail = b"".join(self._tail)
        if len(tail) > self._tail_cap:
            tail = tail[len(tail) - self._tail_cap :]
        head = self._head.decode("utf-8", errors="replace")
        if not self.truncated:
            return head + tail.decode("utf-8", errors="replace")
        marker = f"\n[... {self.dropped} bytes dropped by spinup: output over the {self.cap}-byte cap ...]\n"
        return head + marker + tail.decode("utf-8", errors="replace")
