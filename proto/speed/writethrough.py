"""
Lever 1: write-through TCP writes.

Twisted's TCP transport never sends in C{write()}: it appends to a list and
asks the reactor for EPOLLOUT, so every reply waits for the next reactor
turn and costs an extra C{epoll_ctl} and wake-up (Twisted ticket 5303 has
the same idea open upstream). L{WriteThrough.write} instead calls
C{send()} at once when nothing is queued, and hands whatever the kernel did
not take to the stock buffered path, which then works exactly as before
(EPOLLOUT, C{doWrite}, producer pausing, close after drain).

The stock path is used for the whole write, so that behaviour never
changes, whenever:

  - anything is already queued (bytes must not overtake older bytes);
  - the connection is closing (C{loseConnection}, a half-close pending or
    done, C{abortConnection} called: an aborted connection sends nothing);
  - a I{pull} (non-streaming) producer is registered: it is asked for more
    only by C{doWrite}, when the queue drains, so its writes must queue.
    A I{streaming} producer (the server protocol registers itself, through
    TLS, for backpressure) keeps write-through: when the kernel does not
    take everything the rest is queued and the stock high-water check
    pauses the producer as before. Falling back for every producer would
    switch the lever off for every GNP/1 connection;
  - C{send()} fails with anything but EAGAIN: the data is queued and the
    stock C{doWrite} meets the same error and closes the connection with
    the usual reason.

The close, likewise: C{loseConnection()} with nothing queued stops
reading, and the stock path then asks for EPOLLOUT and waits for the next
poll, whose C{doWrite} finds nothing to send and closes (two C{epoll_ctl}
and an event per connection, for nothing). L{WriteThrough.loseConnection}
instead closes right before the next poll (the reactor's
C{callBeforePoll}, L{proto.speed.reactor}): after the turn's events, its
TLS flush and timed calls, which is where the stock path would still be
waiting. Whatever was written meanwhile is queued by then (writes while
closing take the stock path), and the stock path drains it before
closing, as before; a connection aborted or lost meanwhile is left alone;
a paused streaming or a pull producer, the closes of a half-closed
connection or of one with bytes queued take the stock path from the
start. On another reactor (no C{callBeforePoll}) the stock path is used.

The send itself is C{socket.send} called directly, as
C{tcp.Connection.writeSomeData} does less two wrappers it needs only for
old Pythons and huge writes (writes over C{SEND_LIMIT} still go through
it).

Relies on private attributes of C{twisted.internet.abstract.FileDescriptor}
and C{twisted.internet.tcp.Connection} (C{dataBuffer}, C{_tempDataLen},
C{_writeDisconnecting}, C{_writeDisconnected}, C{_aborting},
C{writeSomeData}); pyproject.toml pins the Twisted range this is tested
with.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from twisted.internet import tcp
from twisted.python import log

if TYPE_CHECKING:
    # For the type checker: the class this is mixed in front of.
    _Connection = tcp.Connection
else:
    _Connection = object


class WriteThrough(_Connection):
    """
    Mixed in front of a C{tcp.Connection} subclass by L{enableWriteThrough}.
    """

    def write(self, data: bytes) -> None:
        """Send at once when nothing is queued; else (or the rest) the stock way."""
        if (
            data.__class__ is bytes
            and not self._tempDataLen
            and not self.dataBuffer
            and self.connected
            and not self.disconnecting
            and not self._aborting
            and not self._writeDisconnecting
            and not self._writeDisconnected
            and (self.producer is None or self.streamingProducer)
            and data
        ):
            # tcp.Connection.writeSomeData less its per-call wrappers
            # (untilConcludes: Python retries EINTR itself since PEP 475;
            # lazyByteSlice: only for writes over SEND_LIMIT, which take
            # the stock path below).
            if len(data) <= self.SEND_LIMIT:
                try:
                    sent = self.socket.send(data)
                except OSError:
                    # EAGAIN: queue. Anything else: queue too, and the stock
                    # doWrite meets the same error and closes with its reason.
                    sent = 0
            else:
                result = self.writeSomeData(data)
                # An error object: as above.
                sent = result if isinstance(result, int) else 0
            if sent == len(data):
                return
            if sent:
                data = data[sent:]
        super().write(data)


    def loseConnection(self) -> None:
        """
        With nothing queued: stop reading and close right before the next
        poll (L{_closeBeforePoll}) instead of waiting for EPOLLOUT; else
        the stock way.
        """
        before = getattr(self.reactor, "callBeforePoll", None)
        if (
            before is None
            or self.TLS
            or not self.connected
            or self.disconnecting
            or self._aborting
            or self._writeDisconnecting
            or self._writeDisconnected
            or self._moreToWrite()
        ):
            super().loseConnection()
            return
        self.stopReading()
        self.disconnecting = 1
        before(self._closeBeforePoll)

    def _moreToWrite(self) -> bool:
        """
        Whether the stock C{doWrite} still has work before the close: bytes
        queued (or waiting to be joined), or a producer to ask for more (a
        pull producer, or a streaming one that is paused).
        """
        return bool(
            self._tempDataLen
            or len(self.dataBuffer) > self.offset
            or (self.producer is not None and (not self.streamingProducer or self.producerPaused))
        )

    def _closeBeforePoll(self) -> None:
        """
        What the stock C{doWrite} does for a closing connection with
        nothing left to send (C{_postLoseConnection}, then the reactor's
        C{_disconnectSelectable}), unless something changed meanwhile.
        """
        if not self.connected or self._aborting:
            return  # lost or aborted meanwhile: that path closes it
        if self._moreToWrite():
            # Written meanwhile (queued: the writer is registered) or a
            # producer to ask for more: the stock doWrite takes over.
            self.startWriting()
            return
        reactor = self.reactor
        try:
            why = self._postLoseConnection()
        except BaseException:
            why = sys.exc_info()[1]
            log.err(system=self.logPrefix())
        if why:
            reactor._disconnectSelectable(self, why, False)  # type: ignore[attr-defined]


_classes: dict[type, type] = {}


def enableWriteThrough(transport) -> bool:
    """
    Make C{transport} (a connected C{tcp.Connection}: TCP or UNIX) write
    through, by switching its class to a subclass with L{WriteThrough}
    mixed in (the connection was built by Twisted's port, which we do not
    choose). Anything else is left alone.

    @return: whether the transport now writes through.
    """
    cls = type(transport)
    if issubclass(cls, WriteThrough):
        return True
    if not issubclass(cls, tcp.Connection):
        return False
    fast = _classes.get(cls)
    if fast is None:
        fast = type(
            "WriteThrough" + cls.__name__,
            (WriteThrough, cls),
            {"__module__": __name__, "__doc__": f"L{{{cls.__module__}.{cls.__qualname__}}} writing through."},
        )
        _classes[cls] = fast
    transport.__class__ = fast
    return True
