"""
A blocking GNP/1 client on the standard library's C{socket} and C{ssl}, for
scripts, tests and the command-line client; no reactor.

    with BlockingClient("localhost", 4433, certPath="client.pem",
                        keyPath="client.key", pin=thumbprint) as client:
        print(client.get("employees/1-A").json())

Requests block until their reply: L{BlockingClient.request} returns a
L{Reply} or raises L{ServerError} (or L{ConnectionClosed},
L{ClientTimeout}). L{BlockingClient.send} sends without waiting and returns
the request's Sequence and a C{concurrent.futures.Future}, so requests can
be pipelined. C{PUSH} frames of every request are queued in arrival order
and read with L{BlockingClient.nextPush}.

One background thread owns the TLS socket and does all reading and
writing (an C{ssl} socket must not be driven from two threads at once);
callers hand it bytes through a buffer and get replies back through
futures. The client is therefore safe to use from several threads. When the
connection ends every pending request fails and L{BlockingClient.nextPush}
raises: nothing waits forever.

The protocol itself (greeting, Sequences, the wording of loss errors) is
L{proto.client.core.ClientCore}, shared with the Twisted client, used
under this client's lock; this module adds the socket, the I/O thread,
futures and the push queue. Its TLS (the C{ssl} context, the handshake
and the pin check) is L{proto.client.blockingtls}.
"""

from __future__ import annotations

import os
import queue
import select
import socket
import ssl
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Iterable

from proto.client.blockingtls import handshake, sslContext
from proto.client.core import (
    CLOSING,
    ENDED,
    ClientCore,
    noGreetingError,
    noReplyError,
)
from proto.client.errors import ClientError
from proto.client.events import (
    Abort,
    Ended,
    Event,
    Failed,
    Pushed,
    Replied,
)
from proto.client.messages import (
    CommandMethods,
    formatSeconds,
    Headers,
    Reply,
    TIMEOUT_GRACE,
)
from proto.client.tlsconfig import Pin
from proto.datadir import DEFAULT_PORT


_CHUNK = 1 << 16
_END = object()


class BlockingClient(CommandMethods[Reply]):
    """
    One admitted GNP/1 connection, made in the constructor.

    @param pin: trust the server certificate with this thumbprint
        (SHA-1 or SHA-256, C{:} ignored).
    @param caFile: or verify the chain against this CA file and the host
        name (C{serverName}, else C{host}).
    @param connectTimeout: seconds for TCP, TLS and the greeting.
    @raise Refused: the server's greeting was C{ERR}.
    @raise ThumbprintMismatch, CertificateNotTrusted: not the trusted server.
    @raise ConnectFailed, ConnectionClosed, ClientTimeout: no connection.
    @raise ValueError: a file cannot be used, or not exactly one of
        C{pin} and C{caFile} was given.
    """

    def __init__(
        self,
        host: str = "localhost",
        port: int = DEFAULT_PORT,
        *,
        certPath: str,
        keyPath: str,
        pin: str | Pin | None = None,
        caFile: str | None = None,
        serverName: str | None = None,
        connectTimeout: float = 30.0,
    ) -> None:
        if (pin is None) == (caFile is None):
            raise ValueError("give exactly one way to verify the server: a pin or a CA file")
        if pin is not None and not isinstance(pin, Pin):
            pin = Pin(pin)
        context = sslContext(certPath, keyPath, pin, caFile)
        #: The protocol state (greeting, Sequences, loss errors); used
        #: under C{_lock}, by callers' threads and the I/O thread.
        self._core: ClientCore[Future[Reply], None] = ClientCore()
        self._lock = threading.Lock()
        self._pushes: queue.Queue[Reply | object] = queue.Queue()
        self._outbox = bytearray()
        self._sock = handshake(self._core, context, host, port, serverName, pin, connectTimeout)
        try:
            self._awaitGreeting(connectTimeout)
        except BaseException:
            self._sock.close()
            raise
        self._sock.setblocking(False)
        self._wakeRead, self._wakeWrite = os.pipe()
        os.set_blocking(self._wakeWrite, False)
        self._thread = threading.Thread(target=self._ioLoop, name="gnp-client-io", daemon=True)
        self._thread.start()

    # -- connecting -----------------------------------------------------

    def _awaitGreeting(self, timeout: float) -> None:
        while not self._core.admitted:
            try:
                data = self._sock.recv(_CHUNK)
            except socket.timeout:
                raise noGreetingError(timeout) from None
            except OSError as e:
                raise self._core.connectionLost(str(e)).error from None
            if not data:
                raise self._core.connectionLost(clean=True).error
            stop = self._handle(self._core.receive(data))
            if stop is not None:
                raise stop

    # -- requests -------------------------------------------------------

    def send(
        self,
        command: str,
        *args: str,
        headers: Headers = None,
        body: bytes | None = None,
        timeout: float | None = None,
    ) -> tuple[str, Future[Reply]]:
        """
        Send one request without waiting.

        @param timeout: seconds, sent as the C{Timeout} header.
        @return: the request's Sequence, and a future that resolves to the
            L{Reply} or to L{ServerError} / L{ConnectionClosed}.
        @raise ValueError: if the request cannot be written.
        @raise ConnectionClosed: if the connection has ended.
        """
        with self._lock:
            sequence, data, future = self._core.request(
                command, args, _newFuture, headers, body, timeout
            )
            self._outbox += data
        self._wake()
        return sequence, future

    def request(
        self,
        command: str,
        *args: str,
        headers: Headers = None,
        body: bytes | None = None,
        timeout: float | None = None,
    ) -> Reply:
        """
        Send one request and wait for its reply.

        @param timeout: seconds: sent as the C{Timeout} header; the wait
            ends L{TIMEOUT_GRACE} seconds later with L{ClientTimeout}.
            Without it, the wait ends only with the reply or the connection.
        @raise ServerError: the server answered C{ERR}.
        """
        sequence, future = self.send(command, *args, headers=headers, body=body, timeout=timeout)
        return self.wait(sequence, future, None if timeout is None else timeout + TIMEOUT_GRACE)

    def wait(self, sequence: str, future: Future[Reply], timeout: float | None = None) -> Reply:
        """
        Wait for the reply of a request made with L{send}.

        @raise ClientTimeout: none came within C{timeout} seconds; the
            request is forgotten (a late reply is dropped).
        """
        try:
            return future.result(timeout)
        except FutureTimeout:
            assert timeout is not None
            with self._lock:
                command = self._core.forget(sequence)
            raise noReplyError(command or "request", sequence, timeout) from None

    def nextPush(self, timeout: float | None = None) -> Reply | None:
        """
        The next C{PUSH} frame (of any request; see C{Reply.sequence}), or
        C{None} if none came within C{timeout} seconds.

        @raise ConnectionClosed: (or the error that ended the connection)
            once the connection has ended and every push was read.
        """
        try:
            item = self._pushes.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, Reply):
            return item
        self._pushes.put(item)  # the end: for the next reader too
        assert self._core.error is not None
        raise self._core.error

    def watch(
        self, prefix: str, since: int | None = None, documents: bool = False,
        include: str | Iterable[str] | None = None, **kw: Any,
    ) -> Reply:
        """
        C{WATCH} (optionally C{Since}, C{Documents}, C{Include}: section 8):
        the reply's C{sequence} names the watch, C{headers["etag"]} where it
        began; read pushes with L{nextPush}. To resume by itself across
        reconnects, see L{proto.client.follow.WatchFollower}.
        """
        from proto.client.follow import watchHeaders
        from proto.client.messages import headerList

        extra = watchHeaders(since, documents, include)
        if extra:
            kw["headers"] = headerList(kw.get("headers")) + extra
        return self.request("WATCH", prefix, **kw)

    def unwatch(self, watchSequence: str, **kw: Any) -> Reply:
        return self.request("UNWATCH", watchSequence, **kw)

    def remind(self, seconds: float, text: str, **kw: Any) -> Reply:
        """C{REMIND}: the reminder arrives later through L{nextPush}."""
        return self.request("REMIND", formatSeconds(seconds), *text.split(), **kw)

    # -- closing --------------------------------------------------------

    @property
    def closed(self) -> bool:
        """C{True} once the connection has ended."""
        with self._lock:
            return self._core.state is ENDED

    def close(self, timeout: float = 5.0) -> None:
        """
        Send what is buffered, then close. Pending requests fail with
        L{ConnectionClosed}.
        """
        with self._lock:
            self._core.close()
        self._wake()
        self._thread.join(timeout)

    def __enter__(self) -> "BlockingClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the I/O thread -------------------------------------------------

    def _wake(self) -> None:
        """Make the I/O thread look at the outbox and the closing flag."""
        with self._lock:
            if self._core.state is ENDED:
                return  # the I/O thread has ended and closed the pipe
            try:
                os.write(self._wakeWrite, b"x")
            except BlockingIOError:
                pass  # the pipe is full: the thread is woken already

    def _ioLoop(self) -> None:
        ended: Ended[Future[Reply]] | None = None
        try:
            while ended is None:
                with self._lock:
                    out = bytes(self._outbox[:_CHUNK])
                    if self._core.state is CLOSING and not out:
                        ended = self._core.connectionLost()  # closed by us
                        break
                sock = self._sock.fileno()
                readable, writable, _ = select.select(
                    [sock, self._wakeRead], [sock] if out else [], []
                )
                if self._wakeRead in readable:
                    os.read(self._wakeRead, 4096)
                if sock in readable:
                    ended = self._readAvailable()
                if out and sock in writable and ended is None:
                    self._write(out)
        except OSError as e:
            ended = self._lost(str(e))
        finally:
            self._finish(ended or self._lost("the I/O thread stopped"))

    def _readAvailable(self) -> Ended[Future[Reply]] | None:
        """Read and dispatch everything readable; the end, if it came."""
        while True:
            try:
                data = self._sock.recv(_CHUNK)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return None
            except ssl.SSLError as e:
                return self._lost(str(e))
            if not data:
                return self._lost(clean=True)
            with self._lock:
                events = self._core.receive(data)
            if self._handle(events) is not None:
                return self._lost()  # the core ended it: not GNP/1

    def _write(self, out: bytes) -> None:
        try:
            sent = self._sock.send(out)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return  # retried with the same bytes when select says so
        with self._lock:
            del self._outbox[:sent]

    def _lost(self, detail: str = "", clean: bool = False) -> Ended[Future[Reply]]:
        with self._lock:
            return self._core.connectionLost(detail, clean=clean)

    def _handle(self, events: list[Event[Future[Reply], None]]) -> ClientError | None:
        """Resolve futures and queue pushes; the error, if the core aborts."""
        for event in events:
            if isinstance(event, Replied):
                event.waiter.set_result(event.reply)
            elif isinstance(event, Pushed):
                self._pushes.put(event.push)  # every request's, in order
            elif isinstance(event, Failed):
                event.waiter.set_exception(event.error)
            elif isinstance(event, Abort):
                return event.error
            # Admitted: the constructor's loop sees core.admitted; a
            # Stray is a reply to a wait that timed out: dropped.
        return None

    def _finish(self, ended: Ended[Future[Reply]]) -> None:
        with self._lock:
            self._outbox.clear()
            os.close(self._wakeRead)
            os.close(self._wakeWrite)
        self._sock.close()
        for future in ended.waiters:
            future.set_exception(ended.error)
        self._pushes.put(_END)


def _newFuture(sequence: str) -> Future[Reply]:
    return Future()
