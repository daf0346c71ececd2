"""
How much of what the server wrote to a connection the client has not
taken yet: the bound on slow watchers (L{proto.commands.watch}) must not
depend on socket buffer sizes, which the kernel autotunes to megabytes.

The count is the sum of
  - the TLS layer's small-write aggregator (cleartext not yet encrypted),
  - the TCP transport's user-space buffer (Twisted's C{dataBuffer}: what
    the kernel would not take),
  - the kernel's send queue (C{ioctl(SIOCOUTQ)}, Linux: bytes not yet
    acknowledged by the peer), where the platform has it.

What the client's own kernel has received but its program has not read
is invisible from here; it is small for a client that stops reading from
the start (the receive buffer grows only while the program reads fast).

Asking the kernel costs a system call, and a change that fans out to many
watchers would ask once per watcher per batch: L{UnsentBound} keeps an
upper bound in Python instead (the last exact figure plus what was written
since) and asks again only when that bound is near the threshold in
question, or has not been checked for a second.

This reads private attributes of Twisted's transports (pinned versions,
see pyproject.toml); a transport without them counts as 0 for that part.
"""

from __future__ import annotations

import fcntl
import struct
import termios
from typing import Any, Callable

#: C{SIOCOUTQ} is C{TIOCOUTQ} on Linux.
_SIOCOUTQ = getattr(termios, "TIOCOUTQ", None)


def _bufferedByAggregator(transport: Any) -> int:
    aggregator = getattr(transport, "_aggregator", None)
    size = getattr(aggregator, "MAX_BUFFER_SIZE", None)
    left = getattr(aggregator, "_bufferLeft", None)
    if isinstance(size, int) and isinstance(left, int):
        return max(0, size - left)
    return 0


def _bufferedByTCP(transport: Any) -> int:
    buffer = getattr(transport, "dataBuffer", None)
    if buffer is None:
        return 0
    return (
        len(buffer)
        - getattr(transport, "offset", 0)
        + getattr(transport, "_tempDataLen", 0)
    )


def kernelSendQueue(transport: Any) -> int:
    """Bytes in the kernel's send queue of C{transport}'s socket (0 if unknown)."""
    sock = getattr(transport, "socket", None)
    if sock is None or _SIOCOUTQ is None:
        return 0
    try:
        raw = fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0")
    except (OSError, ValueError):
        return 0
    return struct.unpack("i", raw)[0]


class UnsentCounter:
    """
    L{unsentBytes} for one connection, with its layers (TLS aggregators,
    the TCP transport) found once: a watch measures before every write,
    so the per-call cost matters when a change fans out to many watchers.
    """

    def __init__(self, transport: Any) -> None:
        #: Twisted's TLS buffer aggregators (private: MAX_BUFFER_SIZE,
        #: _bufferLeft) and the TCP transport, found by duck typing.
        self._aggregators: list[Any] = []
        self._tcp: Any = None
        layer = transport
        for _ in range(6):  # TLS -> (wrappers) -> TCP
            if layer is None:
                break
            aggregator = getattr(layer, "_aggregator", None)
            if isinstance(getattr(aggregator, "MAX_BUFFER_SIZE", None), int) and isinstance(
                getattr(aggregator, "_bufferLeft", None), int
            ):
                self._aggregators.append(aggregator)
            if getattr(layer, "socket", None) is not None or hasattr(layer, "dataBuffer"):
                self._tcp = layer
                break
            layer = getattr(layer, "transport", None)

    def __call__(self) -> int:
        total = 0
        for aggregator in self._aggregators:
            total += max(0, aggregator.MAX_BUFFER_SIZE - aggregator._bufferLeft)
        tcp = self._tcp
        if tcp is not None:
            total += _bufferedByTCP(tcp) + kernelSendQueue(tcp)
        return total


def unsentBytes(transport: Any) -> int:
    """
    Output written to C{transport} (TLS over TCP, possibly with wrappers
    such as HAProxy's PROXY header parser in between, or plain TCP) that
    has not reached the client's kernel yet.
    """
    return UnsentCounter(transport)()


class UnsentBound:
    """
    An upper bound of one connection's unsent bytes, cheap enough to check
    before every write of pushes (L{proto.commands.watch}).

    The bytes a client has not taken only grow by what the server writes:
    whatever was unsent at the last exact measure, plus every byte written
    since (with the TLS records' overhead), bounds what is unsent now.
    So L{unsent} answers from that sum while it is at most the caller's
    threshold (below it, the exact figure is too, and the answer is the
    same), and measures (L{UnsentCounter}: the kernel's send queue is a
    system call) only when the sum is over it, when nothing was measured
    yet, or when the last measure is older than L{REFRESH_SECONDS}: the
    writes counted are those made through L{wrote} (the pushes); a reply
    on the same connection is seen by the next exact measure.
    """

    __slots__ = ("_clock", "_base", "_written", "_at")

    #: Bytes a TLS record may add to what it carries (header, explicit
    #: nonce or IV, tag or MAC, padding: 29 with AES-GCM in TLS 1.2, 22 in
    #: TLS 1.3, at most 85 with CBC and SHA-384); a write of n bytes makes
    #: at most 1 + n // 16384 records.
    RECORD_OVERHEAD = 96

    #: The longest an answer goes without an exact measure behind it.
    REFRESH_SECONDS = 1.0

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._base = -1  # no exact figure yet
        self._written = 0
        self._at = 0.0

    def wrote(self, size: int) -> None:
        """C{size} bytes (cleartext) were written to the connection."""
        self._written += size + self.RECORD_OVERHEAD * (1 + (size >> 14))

    def unsent(self, threshold: int, measure: Callable[[], int]) -> int:
        """
        The unsent bytes: the exact figure (from C{measure()}), or an upper
        bound of it that is at most C{threshold} (so that C{unsent(t) <= t}
        is exact either way). The measure is passed in, not kept: this
        object must not keep its connection alive.
        """
        base = self._base
        if base >= 0:
            bound = base + self._written
            if bound <= threshold and self._clock.seconds() - self._at < self.REFRESH_SECONDS:
                return bound
        return self.exact(measure())

    def exact(self, measured: int) -> int:
        """The exact figure was measured: start counting again from it."""
        self._base = measured
        self._written = 0
        self._at = self._clock.seconds()
        return measured
