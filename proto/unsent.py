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

This reads private attributes of Twisted's transports (pinned versions,
see pyproject.toml); a transport without them counts as 0 for that part.
"""

from __future__ import annotations

import fcntl
import struct
import termios
from typing import Any

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
        self._aggregators = []
        self._tcp = None
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
