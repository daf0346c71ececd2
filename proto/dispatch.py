"""
Dispatch: from a parsed request to its one reply.

Why its own module: what happens between "a request was framed"
(L{proto.wire.RequestParser}) and "its reply is written" is the contract's
heart and is the same whatever carries the bytes:

  - every request gets exactly one reply, C{OK} or C{ERR}, with its
    Sequence (PROTOCOL.md section 4), in completion order: a command that
    returns a Deferred does not hold back later requests;
  - per-request errors keep the connection open (section 5): unknown
    command, a problem found in the head, a Sequence already in flight,
    a certificate not allowed the command or its ids (section 9, checked
    here before the handler runs), a command's own C{CommandError}, a
    failure inside the command (logged with its traceback, never sent);
  - C{Timeout} (section 3): the command's Deferred gets
    C{Deferred.addTimeout}, which cancels its work and answers
    C{ERR Timeout ...}.

L{Dispatcher} is a mixin, the way Twisted's AMP class mixes in
C{BoxDispatcher}: the protocol's hot loop calls C{self._dispatch} with no
extra object or attribute hop per request, and no extra memory per idle
connection. It owns the in-flight table (Sequence -> Deferred) and uses
the reply mapping (L{proto.replymap}: L{successReply}, L{failureReason};
re-exported here); it asks its host (the
protocol) only for what it declares below: C{_write} (coalesced output),
the grant tables, the counters, and two hooks told how many requests are
in flight after one is added or answered (flow control and draining live
there). Its tests use a small host of their own (C{tests/test_dispatch.py}).
"""

from __future__ import annotations

from time import perf_counter
from types import MappingProxyType
from typing import Any, Mapping

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from proto import wire
from proto.commands.base import Command, EncodedResult, Handler
from proto.permissions import Grant
from proto.replymap import failureReason, successReply
from proto.states import READY
from proto.stats import UNKNOWN_COMMAND, CommandStats, ServerStats

_encodeReply = wire.encodeReply

#: The in-flight table of a connection that has none running: shared and
#: read-only, replaced by a dict at the first Deferred (most requests
#: finish at once, and most connections never hold one).
NO_INFLIGHT: Mapping[str, defer.Deferred[Any]] = MappingProxyType({})

__all__ = ["NO_INFLIGHT", "Dispatcher", "failureReason", "successReply"]


class Dispatcher:
    """
    Runs requests and maps their results to replies; mixed into the
    connection (L{proto.protocol.GNPServerProtocol}).

    The host provides the attributes and methods declared here without a
    value (C{stats}, C{clock}, C{grant}, ...), C{_write}, C{displayName},
    C{_requestTracked} and C{_requestAnswered}.
    """

    # -- what the host provides --------------------------------------------
    log: Logger
    stats: ServerStats
    clock: IReactorTime
    peer: str
    grant: Grant
    #: The commands this connection's grant runs without any check (one
    #: of the registry's cached tables, see C{CommandRegistry.unchecked}).
    _free: Mapping[str, Handler]
    #: Every command, by name (the registry's table).
    _commands: Mapping[str, Command]
    #: While the host parses a chunk of input: the replies to write in one
    #: go when it is done (what C{_write} appends to), else C{None}.
    _replies: list[bytes] | None

    # -- our own state (class defaults: no per-connection cost until set) --
    #: Commands in flight, by Sequence (see L{NO_INFLIGHT}).
    _inflight: Mapping[str, defer.Deferred[Any]] = NO_INFLIGHT
    #: While the host parses a chunk of input: C{CommandStats} -> replies
    #: sent at once, whose latency the host notes once at the chunk's end
    #: (their replies are written then). C{None} outside a chunk.
    _immediate: dict[CommandStats, int] | None = None
    #: When set, every new request is answered C{ERR <this>} (a server
    #: shutdown: the requests already running still finish).
    _refusing: str | None = None
    #: For CLIENTS: requests received on this connection.
    requestCount = 0

    #: The host's connection state (L{proto.states}) and whether it has
    #: stopped reading: a batch stops after the request that changed them.
    state: str
    paused: bool

    def _write(self, data: bytes) -> None:
        raise NotImplementedError

    def displayName(self) -> str:
        raise NotImplementedError

    def _requestTracked(self, inflight: int) -> None:
        """A request now runs in the background; C{inflight} do."""

    def _requestAnswered(self, inflight: int) -> None:
        """A request that ran in the background was answered; C{inflight} still run."""

    # -- dispatch ----------------------------------------------------------

    def _dispatch(self, request: wire.Request) -> None:
        """Run C{request} and write its reply (now, or when its Deferred fires)."""
        # Inside a chunk, replies sent at once are timed at the chunk's end
        # (started is None); else from now.
        immediate = self._immediate
        started = None if immediate is not None else perf_counter()
        sequence = request.sequence
        name = request.command
        self.requestCount += 1
        counts = self.stats.commands.get(name)
        if counts is None:
            counts = self.stats.command(UNKNOWN_COMMAND)
        counts.received += 1
        if self._refusing is not None:
            self._writeError(wire.encodeError(self._refusing, sequence), counts, started)
            return
        if request.error is not None:
            self._writeError(wire.encodeError(request.error, sequence), counts, started)
            return
        if sequence in self._inflight:
            self._writeError(
                wire.encodeError(f"Sequence already in flight: {sequence}", sequence),
                counts, started,
            )
            return
        # Section 9: the commands this certificate may run without a check
        # (its level suffices, no prefixes to test) are found at once; the
        # others are checked before they run.
        handler = self._free.get(name)
        if handler is None:
            command = self._commands.get(name)
            if command is None:
                self._writeError(
                    wire.encodeError(f"Unknown command: {request.command}", sequence),
                    counts, started,
                )
                return
            refusal = self._refusal(command, request)
            if refusal is not None:
                self._writeError(wire.encodeError(refusal, sequence), counts, started)
                return
            handler = command.handler
        try:
            # The host (GNPServerProtocol) is the ICommandContext; typing
            # has no "self is also that" for a mixin, and a cast() would
            # cost a call per request on this path.
            result = handler(self, request)  # type: ignore[arg-type]
        except Exception:
            failure = Failure()  # type: ignore[no-untyped-call]
            self._writeError(self._failureReply(failure, request), counts, started)
            return
        # Deferred is generic (an ABC), so isinstance() on it is slow: the
        # common result, bytes, skips that check.
        if type(result) is bytes:
            # The common result; the hottest path (a batch of requests
            # whose handlers run unchecked) is _dispatchMany's loop.
            counts.ok += 1
            if immediate is not None:  # inline L{_timed}
                immediate[counts] = immediate.get(counts, 0) + 1
            else:
                assert started is not None  # set when immediate is None
                counts.latency.observe(perf_counter() - started)
            self._write(_encodeReply(sequence, result))
            return
        if isinstance(result, defer.Deferred):
            self._track(request, result, counts, perf_counter() if started is None else started)
            return
        self._write(successReply(result, sequence))
        counts.ok += 1
        self._timed(counts, started)

    def _dispatchMany(self, requests: list[wire.Request]) -> int:
        """
        Run a batch of requests without bodies (what the parser's
        C{nextMany} gives) inside a chunk of input, in order, each exactly
        as L{_dispatch} would; stop after the one that paused reading or
        began to end the connection. Returns how many ran.

        Why a loop of its own: this is the server's hottest path (a
        pipelining client sends dozens of requests per TLS record). The
        common request (a command this grant runs unchecked, whose handler
        answers bytes at once) is run here with the connection's tables
        held in locals and no call per request besides its handler's;
        anything else goes to L{_dispatch}.
        """
        immediate, replies = self._immediate, self._replies
        if immediate is None or replies is None or self._refusing is not None:
            done = 0
            for request in requests:
                done += 1
                self._dispatch(request)
                if self.paused or self.state is not READY:
                    break
            return done
        commands, free, append = self.stats.commands, self._free, replies.append
        inflight = self._inflight
        # Every request of the batch is received now; one that stops the
        # batch gives back the count of those not run (below), and those
        # sent on to _dispatch count themselves.
        self.requestCount += len(requests)
        # The OK replies of the current run of one command: their C{ok}
        # count and the chunk's tally (C{immediate}, for their latency) are
        # added once per run. Nothing reads either before the chunk's
        # replies are written (metrics read C{ok} on a later turn).
        last: CommandStats | None = None
        run = done = 0
        for request in requests:
            done += 1
            name = request.command
            handler = free.get(name)
            counts = commands.get(name)
            if (
                handler is None or counts is None or request.error is not None
                or request.sequence in inflight
            ):
                self.requestCount -= 1
                self._dispatch(request)
                inflight = self._inflight
            else:
                counts.received += 1
                try:
                    # The host is the ICommandContext (see _dispatch).
                    result = handler(self, request)  # type: ignore[arg-type]
                except Exception:
                    failure = Failure()  # type: ignore[no-untyped-call]
                    self._writeError(self._failureReply(failure, request), counts, None)
                else:
                    reply: bytes | None = None
                    if type(result) is bytes:
                        # wire.encodeReply, inlined (a test compares them).
                        reply = (
                            b"OK\r\nSequence: %s\r\nSize: %d\r\n\r\n%s"
                            % (request.sequence.encode(), len(result), result)
                            if result else b"OK\r\nSequence: %s\r\n\r\n" % (request.sequence.encode(),)
                        )
                    elif type(result) is EncodedResult:
                        # A remembered reply (GET's): wire.encodeReplyTail,
                        # inlined, and no isinstance() on Deferred (an ABC).
                        reply = b"OK\r\nSequence: %s\r\n%s" % (request.sequence.encode(), result.tail)
                    elif isinstance(result, defer.Deferred):
                        self._track(request, result, counts, perf_counter())
                        inflight = self._inflight
                    else:
                        self._write(successReply(result, request.sequence))
                        counts.ok += 1
                        self._timed(counts, None)
                    if reply is not None:
                        append(reply)
                        if counts is last:
                            run += 1
                        else:
                            if last is not None:
                                last.ok += run
                                immediate[last] = immediate.get(last, 0) + run
                            last, run = counts, 1
            if self.paused or self.state is not READY:
                self.requestCount -= len(requests) - done
                break
        if last is not None:
            last.ok += run
            immediate[last] = immediate.get(last, 0) + run
        return done

    def _timed(self, counts: CommandStats, started: float | None) -> None:
        """Note a reply's latency: now, or (started None) at the chunk's end."""
        if started is None:
            immediate = self._immediate
            assert immediate is not None
            immediate[counts] = immediate.get(counts, 0) + 1
        else:
            counts.latency.observe(perf_counter() - started)

    def _writeError(self, data: bytes, counts: CommandStats, started: float | None) -> None:
        """Send a per-request C{ERR} reply and count it (L{proto.stats})."""
        self._write(data)
        counts.err += 1
        self._timed(counts, started)
        self.stats.errors += 1

    def _refusal(self, command: Command, request: wire.Request) -> str | None:
        """
        Why this connection's certificate may not make C{request}, or
        C{None} (PROTOCOL.md section 9: the command's level, then each id
        it touches against the prefixes).
        """
        try:
            ids = () if command.ids is None else tuple(command.ids(request))
        except Exception:
            self.log.failure(
                "Ids of {command} from {peer} could not be found",
                command=request.command, peer=self.peer,
            )
            return (
                f"Internal error while checking the rights for {request.command} "
                "(details are in the server log)"
            )
        refusal: str | None = self.grant.refusal(
            request.command, command.rank, ids, self.displayName()
        )
        return refusal

    # -- requests in flight ------------------------------------------------

    def _track(
        self,
        request: wire.Request,
        d: defer.Deferred[Any],
        counts: CommandStats,
        started: float,
    ) -> None:
        """
        C{request}'s command answered with C{d}: keep it in the in-flight
        table (under its Timeout, if any) until it fires, then reply.
        """
        sequence = request.sequence
        if request.timeout is not None:
            d.addTimeout(request.timeout, self.clock)
        inflight = self._inflight
        if inflight is NO_INFLIGHT:
            inflight = self._inflight = {}
        assert isinstance(inflight, dict)
        inflight[sequence] = d
        self._requestTracked(len(inflight))
        d.addBoth(self._answer, request, d, counts, started)

    def _answer(
        self,
        result: object,
        request: wire.Request,
        d: defer.Deferred[Any],
        counts: CommandStats,
        started: float,
    ) -> None:
        """The command of C{request} finished (C{result}): write its reply."""
        sequence = request.sequence
        inflight = self._inflight
        if inflight.get(sequence) is d:
            del inflight[sequence]  # type: ignore[attr-defined]
        elif isinstance(result, Failure) and isinstance(result.value, defer.CancelledError):
            # Cancelled with the whole table (L{_cancelInflight}: the
            # connection is closing): there is nobody to answer.
            return None
        if isinstance(result, Failure):
            self._writeError(self._failureReply(result, request), counts, started)
        else:
            self._write(successReply(result, sequence))  # type: ignore[arg-type]
            counts.ok += 1
            counts.latency.observe(perf_counter() - started)
        self._requestAnswered(len(self._inflight))
        return None

    def _cancelInflight(self) -> None:
        """The connection is closing: cancel every command in flight, unanswered."""
        inflight, self._inflight = self._inflight, NO_INFLIGHT
        for d in inflight.values():
            d.cancel()

    def _cancelRunning(self) -> None:
        """Cancel every command in flight; each is answered (C{ERR Cancelled ...})."""
        for d in list(self._inflight.values()):
            d.cancel()

    def _failureReply(self, failure: Failure, request: wire.Request) -> bytes:
        """The C{ERR} reply for a command's failure; unexpected ones are logged."""
        reason = failureReason(failure, request)
        if reason is None:
            self.log.failure(
                "Command {command} from {peer} failed", failure,
                command=request.command, peer=self.peer,
            )
            reason = (
                f"Internal error while running {request.command} "
                "(details are in the server log)"
            )
        return wire.encodeError(reason, request.sequence)

