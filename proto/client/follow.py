"""
Following a WATCH across reconnects (C{shared/PROTOCOL.md}, section 8).

A watch ends when the connection does, or when the server drops a client
that reads too slowly (a C{Dropped} push). A follower keeps it going: it
remembers the etag of the last change it delivered and, on a new
connection, sends C{WATCH prefix} with C{Since:} that etag, so the caller
gets every change once, in order. When the server no longer has the
changes since then, the caller is handed the C{Gap} push
(C{{"Type": "Gap", "Since": n, "Etag": m}}: changes in (n, m] may be
missing; re-read what you need) and the follower goes on after m.

  - L{WatchFollower}: blocking (the standard-library client,
    L{proto.client.blocking.BlockingClient}); C{proto-cli WATCH --follow}
    uses it.
  - L{followWatch}: Twisted (L{proto.client.connection}); events go to a
    callback.

Both take a C{connect} callable that opens a new connection, so they work
with any way of connecting (address, pin, CA, timeouts).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Iterable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from proto.client.errors import ClientError, ServerError
from proto.client.messages import Reply, includeHeader

if TYPE_CHECKING:
    from proto.client.blocking import BlockingClient
    from proto.client.connection import GNPClientProtocol

#: A change, Gap or Dropped push, parsed (section 8).
Event = dict[str, Any]

#: Seconds before the first reconnect, and the most between two.
RETRY_SECONDS = 0.2
MAX_RETRY_SECONDS = 10.0


def watchHeaders(
    since: int | None, documents: bool, include: str | Iterable[str] | None
) -> list[tuple[str, str]]:
    """The headers of a C{WATCH} with these options."""
    headers: list[tuple[str, str]] = []
    if since is not None:
        if since < 0:
            raise ValueError(f"since must be 0 or more, not {since}")
        headers.append(("Since", str(since)))
    if documents:
        headers.append(("Documents", "yes"))
        headers += includeHeader(include)
    elif include:
        raise ValueError("include needs documents=True")
    return headers


class _Position:
    """The etag a resumed watch starts from, kept up to date by each push."""

    def __init__(self, since: int | None) -> None:
        self.etag = since

    def started(self, reply: Reply) -> None:
        """The WATCH was answered: without a Since, its Etag is where we are."""
        if self.etag is None:
            self.etag = int(reply.headers.get("etag", "0"))

    def push(self, event: Event) -> bool:
        """
        Account for a push; C{True} if it is for the caller, C{False} if it
        was a C{Dropped} (the watch must be started again from here).
        """
        if event.get("Type") == "Dropped":
            if isinstance(event.get("Etag"), int):
                self.etag = max(self.etag or 0, event["Etag"])
            return False
        if isinstance(event.get("Etag"), int):
            self.etag = event["Etag"]
        return True


class WatchFollower:
    """
    A blocking watch that survives reconnects and Dropped pushes.

        follower = WatchFollower(lambda: BlockingClient(...), "employees/", since=0)
        while True:
            event = follower.next(timeout=1.0)   # a dict, or None
            ...

    @ivar etag: the etag of the last change (or Gap) delivered, or the
        start; a new C{WatchFollower(..., since=follower.etag)} goes on
        from there.
    @ivar reconnects: how many times it had to start the watch again.
    """

    def __init__(
        self,
        connect: Callable[[], BlockingClient],
        prefix: str,
        since: int | None = None,
        documents: bool = False,
        include: str | Iterable[str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        onReconnect: Callable[[str], None] | None = None,
    ) -> None:
        watchHeaders(since, documents, include)  # refuse bad options early
        self._connect = connect
        self._prefix = prefix
        self._documents = documents
        self._include = include
        self._sleep = sleep
        self._onReconnect = onReconnect
        self._position = _Position(since)
        self._client: BlockingClient | None = None
        self._sequence: str | None = None
        self._delay = RETRY_SECONDS
        self.reconnects = 0

    @property
    def etag(self) -> int | None:
        return self._position.etag

    def start(self) -> Reply:
        """
        Connect and WATCH now (L{next} does it when needed).

        @raise ClientError: if the server cannot be reached.
        @raise ServerError: if it refuses the WATCH (not retried).
        """
        client = self._connect()
        try:
            headers = watchHeaders(self._position.etag, self._documents, self._include)
            reply = client.request("WATCH", self._prefix, headers=headers)
        except BaseException:
            client.close()
            raise
        self._position.started(reply)
        self._client, self._sequence = client, reply.sequence
        self._delay = RETRY_SECONDS
        return reply

    def next(self, timeout: float | None = None) -> Event | None:
        """
        The next change, Gap (as the parsed push), or C{None} if none came
        within C{timeout} seconds. Reconnects (with a growing delay) as
        needed; a WATCH refused by the server raises L{ServerError}.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            client = self._client
            if client is None:
                try:
                    self.start()
                except ServerError:
                    raise
                except ClientError as e:
                    self._retryLater(f"cannot watch: {e}", left)
                    if deadline is not None and time.monotonic() >= deadline:
                        return None
                    continue
                client = self._client
                assert client is not None
            try:
                push = client.nextPush(timeout=left)
            except ClientError as e:
                self._lost(f"connection lost: {e}")
                continue
            if push is None:
                return None
            if push.sequence != self._sequence:
                continue
            event: Event = push.json()
            if self._position.push(event):
                return event
            self._lost(f"dropped by the server: {event.get('Reason', '')}")

    def _lost(self, why: str) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except ClientError:
                pass
        self.reconnects += 1
        if self._onReconnect is not None:
            self._onReconnect(f"{why}; resuming from etag {self.etag}")

    def _retryLater(self, why: str, left: float | None) -> None:
        if self._onReconnect is not None:
            self._onReconnect(f"{why}; retrying in {self._delay:g} s")
        self._sleep(self._delay if left is None else min(self._delay, left))
        self._delay = min(self._delay * 2, MAX_RETRY_SECONDS)

    def close(self) -> None:
        """End the watch (closes its connection)."""
        client, self._client = self._client, None
        if client is not None:
            client.close()


class _TwistedFollower:
    """What L{followWatch} returns: C{stop()} it; C{etag} as in L{WatchFollower}."""

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        connect: Callable[[], Deferred[GNPClientProtocol]],
        prefix: str,
        onEvent: Callable[[Event], None],
        since: int | None,
        documents: bool,
        include: str | Iterable[str] | None,
        onReconnect: Callable[[str], None] | None,
    ) -> None:
        self._clock = clock
        self._connect = connect
        self._prefix = prefix
        self._onEvent = onEvent
        self._position = _Position(since)
        self._documents = documents
        self._include = include
        self._onReconnect = onReconnect
        self._client: GNPClientProtocol | None = None
        self._delay = RETRY_SECONDS
        self._retry: IDelayedCall | None = None
        self._stopped = False
        self.reconnects = 0
        self.started: Deferred[Reply] = Deferred()

    @property
    def etag(self) -> int | None:
        return self._position.etag

    def _start(self) -> None:
        self._retry = None
        if self._stopped:
            return
        d = self._connect()
        d.addCallback(self._watch)
        d.addErrback(self._failed)

    def _watch(self, client: GNPClientProtocol) -> Deferred[None]:
        if self._stopped:
            return client.close()
        self._client = client
        client.whenClosed().addCallback(lambda _: self._closed(client))
        headers = watchHeaders(self._position.etag, self._documents, self._include)
        d = client.watch(self._prefix, self._pushed, headers=headers)

        def began(reply: Reply) -> None:
            self._position.started(reply)
            self._delay = RETRY_SECONDS
            if not self.started.called:
                self.started.callback(reply)

        return d.addCallback(began)

    def _pushed(self, push: Reply) -> None:
        event: Event = push.json()
        if self._position.push(event):
            self._onEvent(event)
        elif self._client is not None:
            self._client.close()  # Dropped: _closed starts again from here

    def _failed(self, failure: Failure) -> None:
        if self._stopped:
            return
        if isinstance(failure.value, ServerError) or not isinstance(failure.value, ClientError):
            # Refused by the server (or a request that cannot be written):
            # retrying would not help.
            if not self.started.called:
                self.started.errback(failure)
            else:
                self._log.failure("WATCH {prefix!r} refused on resume", failure, prefix=self._prefix)
            self.stop()
            return
        self._again(f"cannot watch: {failure.getErrorMessage()}")

    def _closed(self, client: GNPClientProtocol) -> None:
        if client is self._client:
            self._client = None
            self._again("connection ended")

    def _again(self, why: str) -> None:
        if self._stopped or self._retry is not None:
            return
        self.reconnects += 1
        if self._onReconnect is not None:
            self._onReconnect(f"{why}; resuming from etag {self.etag} in {self._delay:g} s")
        self._retry = self._clock.callLater(self._delay, self._start)
        self._delay = min(self._delay * 2, MAX_RETRY_SECONDS)

    def stop(self) -> None:
        """Stop following: no more events, no more reconnects."""
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        client, self._client = self._client, None
        if client is not None:
            client.close()


def followWatch(
    clock: IReactorTime,
    connect: Callable[[], Deferred[GNPClientProtocol]],
    prefix: str,
    onEvent: Callable[[Event], None],
    since: int | None = None,
    documents: bool = False,
    include: str | Iterable[str] | None = None,
    onReconnect: Callable[[str], None] | None = None,
) -> _TwistedFollower:
    """
    Follow C{WATCH prefix} across reconnects, with Twisted.

    @param connect: returns a Deferred firing with a connected
        L{proto.client.connection.GNPClientProtocol} (e.g. a lambda around
        L{proto.client.connection.connect}).
    @param onEvent: called with each change or Gap push (parsed JSON), in
        etag order, each once.
    @return: the follower; its C{started} Deferred fires with the first
        WATCH reply (or fails if the first WATCH is refused).
    """
    watchHeaders(since, documents, include)
    follower = _TwistedFollower(clock, connect, prefix, onEvent, since, documents, include, onReconnect)
    follower._start()
    return follower
