"""
Lever 6: TLS records in and out with OpenSSL called directly.

L{DirectRecords} is mixed into L{proto.speed.tlsflush.FastTLSTransport}
in front of Twisted's C{TLSMemoryBIOProtocol} and replaces the four
methods a TLS record passes through (C{dataReceived}, C{_flushReceiveBIO},
C{_write}, C{_flushSendBIO}). At one client every request is one record
in and one out, so what these cost is paid per request (issues 9 and 13).
Savings, each keeping Twisted's behaviour:

  - no failing call per receive and per flush: Twisted's
    C{_flushReceiveBIO} calls C{recv} until it raises C{WantReadError},
    and C{_flushSendBIO} calls C{bio_read} even when OpenSSL wrote
    nothing; each raised error costs about 2 microseconds (pyOpenSSL
    builds it from OpenSSL's error queue), twice per record. Here both
    first ask the memory BIOs how many bytes they hold
    (C{BIO_get_mem_data}) and OpenSSL how many plaintext bytes it has
    buffered (C{SSL_pending}), and stop when there is nothing: the same
    calls, less the one that could only fail. (OpenSSL reads a record
    from the memory BIO only whole and without read-ahead, which a TLS
    context does not turn on, so empty BIO and nothing pending means no
    record is left to decode.)
  - once the handshake is done, each record calls OpenSSL itself
    (C{BIO_write}, C{SSL_read}, C{SSL_write}, C{BIO_read}, as pyOpenSSL's
    C{bio_write}, C{recv}, C{send} and C{bio_read} do), into one reused
    buffer, and hands a result of 0 or less to pyOpenSSL's own error
    mapping (C{_raise_ssl_error}, C{_handle_bio_errors}), so that every
    error raises what it raised before and Twisted's handlers meet it as
    before. What is skipped is each wrapper's argument checks, its fresh
    32 KiB buffer, its context manager and, after a call that succeeded,
    the check of the context's callback helpers (certificate
    verification, ALPN, OCSP): their callbacks run only during a
    handshake, and after ours there is none (C{OP_NO_RENEGOTIATION},
    C{VERIFY_CLIENT_ONCE}, no TLS 1.3 post-handshake authentication;
    L{proto.tls}). Before the handshake's end, Twisted's own methods run.
  - the layers a record crosses are fewer calls: plaintext goes to the
    application protocol directly (what C{ProtocolWrapper.dataReceived}
    does), and the aggregator's flush (L{DirectRecords._sendRecords})
    is C{TLSMemoryBIOProtocol.write} and C{_write} in one, with the
    send BIO read in the same loop.

Relies on C{twisted.protocols.tls} internals (C{_tlsConnection},
C{_handshakeDone}, C{_appSendBuffer}, C{_lostTLSConnection},
C{_aborted}, C{_bufferedWrite}, C{_shutdownTLS},
C{_tlsShutdownFinished}) and pyOpenSSL's (C{_ssl}, C{_into_ssl},
C{_from_ssl}, C{_raise_ssl_error}, C{_handle_bio_errors});
pyproject.toml pins both ranges.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from OpenSSL._util import ffi, lib
from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure

if TYPE_CHECKING:
    _Base = TLSMemoryBIOProtocol
else:
    _Base = object

#: C{BIO_get_mem_data(bio, NULL)}: how many bytes a memory BIO holds.
_memBytes = lib.BIO_get_mem_data
_NULL = ffi.NULL
_sslPending = lib.SSL_pending
_sslRead = lib.SSL_read
_sslWrite = lib.SSL_write
_bioRead = lib.BIO_read
_bioWrite = lib.BIO_write
_cBuffer = ffi.buffer

#: How much one C{SSL_read} or C{BIO_read} takes, as Twisted asks
#: (C{recv(2**15)}, C{bio_read(2**15)}).
_CHUNK = 2**15
#: Twisted's C{_write} hands OpenSSL at most one TLS record's payload per call.
_RECORD = 2**14
#: Where C{SSL_read} and C{BIO_read} put their bytes, copied out at once
#: (pyOpenSSL allocates a fresh 32 KiB buffer per call instead). One for
#: the process: only the reactor thread runs TLS transports, and nothing
#: runs between a read and its copy.
_scratch = ffi.new("char[]", _CHUNK)


class _Wires:
    """
    What a connection's records pass through once its handshake is done,
    none of which changes for the rest of its life: OpenSSL's C{SSL} and
    its two memory BIOs (pyOpenSSL's C{Connection._ssl}, C{_into_ssl},
    C{_from_ssl}; the C{SSL}'s is what keeps the three alive). Not
    pyOpenSSL's C{Connection} itself, the application protocol nor the TCP
    transport: they point back at the TLS transport, and such a cycle
    would keep a closed connection's objects for the garbage collector
    (Twisted drops its C{_tlsConnection} when the connection is lost, for
    that reason).

    Why held apart: a TLS transport is a C{ProtocolWrapper}, whose
    C{__getattr__} (it hands unknown names to the transport under it) makes
    every attribute read on it, found or not, go through CPython's slower
    generic path (C{slot_tp_getattr_hook}; the interpreter's attribute
    caches skip such types), and pyOpenSSL's C{Connection} has one too. A
    request read those attributes about 25 times (6.6k of the main
    thread's 125k instructions per 1-client GET, callgrind); here most
    are read once per connection.
    """

    __slots__ = ("ssl", "into", "out")

    def __init__(self, tls: Any) -> None:
        self.ssl = tls._ssl
        self.into = tls._into_ssl
        self.out = tls._from_ssl


class DirectRecords(_Base):
    """Mixed in front of C{TLSMemoryBIOProtocol} (see the module docstring)."""

    #: Set (L{_Wires}) at the first record after the handshake's end.
    _wires: _Wires | None = None

    def _wiresUp(self) -> _Wires | None:
        """The L{_Wires}, made now if the handshake is done and the connection not lost; else C{None}."""
        tls = self._tlsConnection
        if not self._handshakeDone or tls is None:
            return None
        wires = self._wires = _Wires(tls)
        return wires

    def dataReceived(self, data: bytes) -> None:
        """
        C{TLSMemoryBIOProtocol.dataReceived}: once the handshake is done and
        no write waits for OpenSSL, the bytes go to the receive BIO with
        C{BIO_write} itself (as C{bio_write} does), then the records are
        read (L{_flushReceiveBIO}).
        """
        wires = self._wires
        if wires is None:
            wires = self._wiresUp()
            if wires is None:
                TLSMemoryBIOProtocol.dataReceived(self, data)
                return
        if self._appSendBuffer or data.__class__ is not bytes:
            TLSMemoryBIOProtocol.dataReceived(self, data)
            return
        into = wires.into
        written = _bioWrite(into, data, len(data))
        if written <= 0:
            self._tlsConnection._handle_bio_errors(into, written)
        _receiveRecords(self, wires)

    def _flushReceiveBIO(self) -> None:
        """
        Twisted's loop (C{TLSMemoryBIOProtocol._flushReceiveBIO}, 26.x) line
        for line, but it stops once neither the receive BIO nor OpenSSL
        holds a byte, instead of on the C{WantReadError} of one more recv,
        and calls C{SSL_read} itself (L{_receiveRecords}). A connection
        lost before its handshake's end gets Twisted's own.
        """
        wires = self._wires
        if wires is None:
            wires = self._wiresUp()
            if wires is None:
                TLSMemoryBIOProtocol._flushReceiveBIO(self)
                return
        _receiveRecords(self, wires)

    def _sendRecords(self, data: bytes, closing: bool = True) -> None:
        """
        C{TLSMemoryBIOProtocol.write} (C{closing}: drop the bytes once
        C{loseConnection} was called, unless a producer is registered) and
        then its C{_write} (26.x) line for line: C{SSL_write} per record
        of at most 16 KiB, called itself (a result of 0 or less raises
        through pyOpenSSL's C{_raise_ssl_error} what C{send} would have),
        each followed by what C{_flushSendBIO} does. Before the
        handshake's end, or not bytes, Twisted's own C{_write}, whose
        C{send} takes any buffer.
        """
        if closing and self.disconnecting and self._producer is None:
            return
        wires = self._wires
        if wires is None:
            wires = self._wiresUp()
            if wires is None:
                TLSMemoryBIOProtocol._write(self, data)
                return
        if data.__class__ is not bytes:
            TLSMemoryBIOProtocol._write(self, data)
            return
        if self._lostTLSConnection:
            return
        ssl, out = wires.ssl, wires.out
        alreadySent = 0
        while alreadySent < len(data):
            toSend = data[alreadySent : alreadySent + _RECORD]
            sent = _sslWrite(ssl, toSend, len(toSend))
            if sent <= 0:
                try:
                    self._tlsConnection._raise_ssl_error(ssl, sent)
                except WantReadError:
                    self._bufferedWrite(data[alreadySent:])
                    break
                except Error:
                    self._tlsShutdownFinished(Failure())
                    break
            alreadySent += sent
            # _flushSendBIO, inlined; no need to ask first whether the send
            # BIO holds bytes: a successful SSL_write just wrote a record.
            got = _bioRead(out, _scratch, _CHUNK)
            if got > 0:
                transport: Any = self.transport
                transport.write(_cBuffer(_scratch, got)[:])
            else:
                self._flushSendBIO()  # (cannot happen) as before: ask, then read or not

    def _write(self, data: bytes) -> None:
        """C{TLSMemoryBIOProtocol._write}: L{_sendRecords} without the closing check."""
        self._sendRecords(data, False)

    def _flushSendBIO(self) -> None:
        """
        C{TLSMemoryBIOProtocol._flushSendBIO}, only when the send BIO holds
        bytes, and with C{BIO_read} called itself.
        """
        tls = self._tlsConnection
        out = tls._from_ssl
        if _memBytes(out, _NULL) > 0:
            got = _bioRead(out, _scratch, _CHUNK)
            if got <= 0:
                try:
                    tls._handle_bio_errors(out, got)
                except WantReadError:
                    return
            transport: Any = self.transport
            transport.write(_cBuffer(_scratch, got)[:])


def _receiveRecords(transport: DirectRecords, wires: _Wires) -> None:
    """
    L{DirectRecords._flushReceiveBIO} after the handshake (a function:
    called from C{dataReceived} without a method look-up on the
    transport, see L{_Wires}).
    """
    ssl, into = wires.ssl, wires.into
    app = transport.wrappedProtocol
    while not transport._lostTLSConnection:
        got = _sslRead(ssl, _scratch, _CHUNK)
        if got > 0:
            data = _cBuffer(_scratch, got)[:]
        else:
            # What recv() does with such a result: raise, or (no error:
            # it cannot happen, but as recv) give b"".
            try:
                transport._tlsConnection._raise_ssl_error(ssl, got)
            except WantReadError:
                break
            except ZeroReturnError:
                transport._shutdownTLS()
                transport._tlsShutdownFinished(None)
                continue
            except Error:
                transport._tlsShutdownFinished(Failure())
                continue
            data = b""
        if not transport._aborted:
            # ProtocolWrapper.dataReceived, inlined.
            app.dataReceived(data)
        if not _sslPending(ssl) and _memBytes(into, _NULL) <= 0:
            break
    if _memBytes(wires.out, _NULL) > 0:
        transport._flushSendBIO()
