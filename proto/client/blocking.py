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
"""

from __future__ import annotations

import itertools
import os
import queue
import select
import socket
import ssl
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

from proto.client.errors import (
    CertificateNotTrusted,
    ClientError,
    ClientTimeout,
    ConnectFailed,
    ConnectionClosed,
    ProtocolError,
    Refused,
    ServerError,
)
from proto.client.messages import (
    CommandMethods,
    encodeClientRequest,
    formatSeconds,
    Headers,
    Reply,
    TIMEOUT_GRACE,
)
from proto.client.tlsconfig import Pin, loadIdentity
from proto.datadir import DEFAULT_PORT
from proto.wire import OK, PUSH, FramingError, Frame, Greeting, ReplyParser


_CHUNK = 1 << 16
_END = object()


def _sslContext(certPath: str, keyPath: str, pin: Pin | None, caFile: str | None) -> ssl.SSLContext:
    loadIdentity(certPath, keyPath)  # for a clear error naming the bad file
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if pin is not None:
        # The chain is not consulted; the leaf is compared with the pin
        # right after the handshake, before anything is sent or read.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        try:
            ctx.load_verify_locations(cafile=caFile)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(f"cannot load CA file {caFile}: {e}") from None
    ctx.load_cert_chain(certPath, keyPath)
    return ctx


class BlockingClient(CommandMethods):
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
        context = _sslContext(certPath, keyPath, pin, caFile)
        self._sequences = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[str, Future]] = {}
        self._pushes: queue.Queue = queue.Queue()
        self._outbox = bytearray()
        self._closing = False
        self._endError: ClientError | None = None
        self._fatalReason: str | None = None
        self._parser = ReplyParser()
        self._sock = self._handshake(context, host, port, serverName, pin, connectTimeout)
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

    @staticmethod
    def _handshake(context, host, port, serverName, pin, timeout) -> ssl.SSLSocket:
        try:
            raw = socket.create_connection((host, port), timeout=timeout)
        except socket.timeout:
            raise ClientTimeout(f"cannot connect to {host}:{port} within {timeout:g} seconds") from None
        except OSError as e:
            raise ConnectFailed(f"cannot connect to {host}:{port}: {e.strerror or e}") from None
        try:
            sock = context.wrap_socket(raw, server_hostname=serverName or host)
        except ssl.SSLCertVerificationError as e:
            raise CertificateNotTrusted(
                f"server certificate is not trusted: {e.verify_message or e}"
            ) from None
        except ssl.SSLError as e:
            raise ConnectionClosed(f"TLS handshake with the server failed: {e}") from None
        except socket.timeout:
            raise ClientTimeout(f"TLS handshake not done within {timeout:g} seconds") from None
        finally:
            raw.close()  # detached by wrap_socket on success: closes nothing then
        if pin is not None:
            try:
                pin.check(sock.getpeercert(binary_form=True))
            except ClientError:
                sock.close()
                raise
        return sock

    def _awaitGreeting(self, timeout: float) -> None:
        while True:
            try:
                data = self._sock.recv(_CHUNK)
            except socket.timeout:
                raise ClientTimeout(f"no greeting from the server within {timeout:g} seconds") from None
            except OSError as e:
                raise ConnectionClosed(f"connection lost before the server's greeting: {e}") from None
            if not data:
                raise ConnectionClosed("the server closed the connection before its greeting")
            try:
                items = self._parser.feed(data)
            except FramingError as e:
                raise ProtocolError(f"the server sent something that is not GNP/1: {e}") from None
            if items:
                greeting = items[0]
                if not greeting.ok:
                    raise Refused(greeting.reason)
                self._dispatch(items[1:])
                return

    # -- requests -------------------------------------------------------

    def send(
        self,
        command: str,
        *args: str,
        headers: Headers = None,
        body: bytes | None = None,
        timeout: float | None = None,
    ) -> tuple[str, Future]:
        """
        Send one request without waiting.

        @param timeout: seconds, sent as the C{Timeout} header.
        @return: the request's Sequence, and a future that resolves to the
            L{Reply} or to L{ServerError} / L{ConnectionClosed}.
        @raise ValueError: if the request cannot be written.
        @raise ConnectionClosed: if the connection has ended.
        """
        future: Future = Future()
        with self._lock:
            sequence = str(next(self._sequences))
            data = encodeClientRequest(command, args, sequence, headers, body, timeout)
            if self._endError is not None or self._closing:
                raise self._endError or ConnectionClosed("the connection is closed")
            self._pending[sequence] = (command.upper(), future)
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

    def wait(self, sequence: str, future: Future, timeout: float | None = None) -> Reply:
        """
        Wait for the reply of a request made with L{send}.

        @raise ClientTimeout: none came within C{timeout} seconds; the
            request is forgotten (a late reply is dropped).
        """
        try:
            return future.result(timeout)
        except FutureTimeout:
            with self._lock:
                command, _ = self._pending.pop(sequence, ("request", None))
            raise ClientTimeout(
                f"no reply to {command} (Sequence {sequence}) within {timeout:g} seconds"
            ) from None

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
        if item is _END:
            self._pushes.put(_END)
            raise self._endError
        return item






    def watch(
        self, prefix: str, since: int | None = None, documents: bool = False, include=None, **kw
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

    def unwatch(self, watchSequence: str, **kw) -> Reply:
        return self.request("UNWATCH", watchSequence, **kw)

    def remind(self, seconds: float, text: str, **kw) -> Reply:
        """C{REMIND}: the reminder arrives later through L{nextPush}."""
        return self.request("REMIND", formatSeconds(seconds), *text.split(), **kw)



    # -- closing --------------------------------------------------------

    @property
    def closed(self) -> bool:
        """C{True} once the connection has ended."""
        return self._endError is not None

    def close(self, timeout: float = 5.0) -> None:
        """
        Send what is buffered, then close. Pending requests fail with
        L{ConnectionClosed}.
        """
        with self._lock:
            self._closing = True
        self._wake()
        self._thread.join(timeout)

    def __enter__(self) -> "BlockingClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the I/O thread -------------------------------------------------

    def _wake(self) -> None:
        """Make the I/O thread look at the outbox and the closing flag."""
        with self._lock:
            if self._endError is not None:
                return  # the I/O thread has ended and closed the pipe
            try:
                os.write(self._wakeWrite, b"x")
            except BlockingIOError:
                pass  # the pipe is full: the thread is woken already

    def _ioLoop(self) -> None:
        error: ClientError | None = None
        try:
            while error is None:
                with self._lock:
                    out = bytes(self._outbox[:_CHUNK])
                    if self._closing and not out:
                        error = ConnectionClosed("connection closed by the client")
                        break
                readable, writable, _ = select.select(
                    [self._sock, self._wakeRead], [self._sock] if out else [], []
                )
                if self._wakeRead in readable:
                    os.read(self._wakeRead, 4096)
                if self._sock in readable:
                    error = self._readAvailable()
                if out and self._sock in writable and error is None:
                    self._write(out)
        except OSError as e:
            error = ConnectionClosed(f"connection lost: {e}")
        finally:
            self._finish(error or ConnectionClosed("connection lost"))

    def _readAvailable(self) -> ClientError | None:
        """Read and dispatch everything readable; return why to stop, if so."""
        while True:
            try:
                data = self._sock.recv(_CHUNK)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return None
            except ssl.SSLError as e:
                return self._lostError(f"connection lost: {e}")
            if not data:
                return self._lostError("the server closed the connection")
            try:
                self._dispatch(self._parser.feed(data))
            except FramingError as e:
                return ProtocolError(f"the server sent something that is not GNP/1: {e}")

    def _write(self, out: bytes) -> None:
        try:
            sent = self._sock.send(out)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return  # retried with the same bytes when select says so
        with self._lock:
            del self._outbox[:sent]

    def _lostError(self, what: str) -> ConnectionClosed:
        if self._fatalReason is not None:
            what = f"the server closed the connection: {self._fatalReason}"
        pending = len(self._pending)
        return ConnectionClosed(what + (f" ({pending} request(s) pending)" if pending else ""))

    def _dispatch(self, items: list[Frame | Greeting]) -> None:
        for frame in items:
            if isinstance(frame, Greeting):
                raise FramingError("a second greeting")
            if frame.sequence is None:
                self._fatalReason = frame.reason or frame.kind
            elif frame.kind == PUSH:
                self._pushes.put(Reply.fromFrame(frame))
            else:
                with self._lock:
                    command, future = self._pending.pop(frame.sequence, (None, None))
                if future is None:
                    continue  # given up on (wait timed out)
                if frame.kind == OK:
                    future.set_result(Reply.fromFrame(frame))
                else:
                    future.set_exception(ServerError(frame.reason, frame.sequence, command))

    def _finish(self, error: ClientError) -> None:
        with self._lock:
            self._endError = error
            pending, self._pending = self._pending, {}
            self._outbox.clear()
            os.close(self._wakeRead)
            os.close(self._wakeWrite)
        self._sock.close()
        for _, future in pending.values():
            future.set_exception(error)
        self._pushes.put(_END)
