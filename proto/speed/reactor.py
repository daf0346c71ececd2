"""
Lever 3: an epoll reactor without the per-event log context.

C{EPollReactor.doPoll} runs every ready descriptor's C{doRead}/C{doWrite}
inside C{log.callWithLogger(selectable, ...)}: it asks the selectable for
its C{logPrefix()}, copies the legacy log context dictionary and installs
it, for every event, just so that a legacy C{log.msg}/C{log.err} made
during the event can be stamped with C{system=<prefix>}. On a busy server
that bookkeeping costs more than the TLS record it wraps.

L{QuietEPollReactor} keeps what matters of it: an exception from an event
handler is still caught, logged (with C{system} set to the selectable's
log prefix, computed only then) and the selectable is still disconnected,
exactly as before. What it drops: legacy C{twisted.python.log} messages
emitted during an event no longer carry the connection's prefix as their
C{system} (our code logs with C{twisted.logger}, which never used it).

Installing it (a reactor must be installed before anything imports
C{twisted.internet.reactor}):

  - C{twistd -n proto} installs it itself, unless C{--plain-transport} is
    given: twistd parses the plugin's options before it imports the
    reactor, and L{proto.tap.Options.postOptions} calls L{installIfFree};
  - C{twistd --reactor proto-epoll ...} selects it by name (the reactor
    plugin in C{twisted/plugins/proto_plugin.py}), for example for
    C{twistd -ny tac/proto.tac};
  - if another reactor was installed first (C{twistd --reactor=poll}, a
    C{.tac} importing the reactor), that one is kept and the server logs
    that this lever is off.

The two methods below follow Twisted's C{EPollReactor.doPoll} and
C{PosixReactorBase._doReadOrWrite} (26.x) line for line apart from the log
context; pyproject.toml pins the Twisted range.
"""

from __future__ import annotations

import errno
import sys

from twisted.internet import epollreactor
from twisted.internet.base import _log as _baseLog
from twisted.internet.base import _topHandler
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.internet.posixbase import _NO_FILEDESC
from twisted.python import log

#: The name given to C{twistd --reactor}.
NAME = "proto-epoll"


def _prefix(selectable) -> str:
    try:
        return selectable.logPrefix()
    except BaseException:
        return "(buggy logPrefix method)"


def _runEach(calls: list, system: str) -> None:
    """
    Call each of C{calls} in order; one that raises is logged (Twisted's
    legacy C{log.err}, as the reactor's own handlers do) and the rest still
    run: for L{QuietEPollReactor.callAfterEvents} and C{callBeforePoll}.
    """
    for f in calls:
        try:
            f()
        except BaseException:
            log.err(system=system)


class QuietEPollReactor(epollreactor.EPollReactor):
    """
    C{EPollReactor} without C{log.callWithLogger} around each event, and
    with L{callBeforePoll}.
    """

    def __init__(self) -> None:
        super().__init__()
        self._beforePoll: list = []
        self._afterEvents: list = []

    def callBeforePoll(self, f) -> None:
        """
        Call C{f()} once, at the end of this reactor turn: after the timed
        calls, right before the thread blocks in the poller (and lets go
        of the GIL). The store's worker threads are woken there (issue 13):
        a thread woken then finds the GIL free at once, instead of waiting
        for it while the reactor thread finishes its turn.
        """
        self._beforePoll.append(f)

    def callAfterEvents(self, f) -> None:
        """
        Call C{f()} once, as soon as the events of this poll are handled:
        before the turn's timed calls (and before the C{callBeforePoll}
        calls); asked for outside the handling of events (by a timed call,
        a C{callBeforePoll} call, before the reactor runs), right before
        the next poll. The TLS flush (L{proto.speed.tlsflush}) is done
        there (issue 13): the replies to a poll's requests leave before
        the reactor's own work of the turn (its timed calls, the next
        timeout) instead of after it, which at one client shortened every
        request's round trip by that work; a turn's replies still leave
        together, after all of its events.
        """
        self._afterEvents.append(f)

    def _runAfterEvents(self) -> None:
        calls, self._afterEvents = self._afterEvents, []
        _runEach(calls, "callAfterEvents")

    def mainLoop(self) -> None:
        """
        C{ReactorBase.mainLoop} (26.x) with its handler of unexpected
        errors (log, then go on) entered once around the turns rather than
        at every turn: the same turns, one context manager less per turn.
        """
        while self._started:
            with _topHandler:
                while self._started:
                    self.runUntilCurrent()
                    t2 = self.timeout()
                    t = self.running and t2
                    self.doIteration(t)
        _baseLog.info("Main loop terminated.")

    def doPoll(self, timeout):
        if self._afterEvents:
            # Asked for since the last poll's events were handled.
            self._runAfterEvents()
            if self._beforePoll or self._afterEvents:
                timeout = 0
            elif self._newTimedCalls:
                due = self.timeout()
                if due is not None and (timeout is None or due < timeout):
                    timeout = due
        if self._beforePoll:
            # What the timeout was computed from (mainLoop's timeout()):
            # the earliest timed call, and the new ones not filed yet.
            heap = self._pendingTimedCalls
            first = heap[0] if heap else None
            firstTime = first.time if first is not None else None
            calls, self._beforePoll = self._beforePoll, []
            _runEach(calls, "callBeforePoll")
            # They may have scheduled calls (or moved one sooner), or asked
            # for another call before the poll: do not sleep past them. (A
            # TLS flush, the usual one, does none of these: then the
            # timeout already computed stands.)
            if self._beforePoll or self._afterEvents:
                timeout = 0
            elif self._newTimedCalls or (
                (heap[0] if heap else None) is not first
                or (first is not None and first.time != firstTime)
                or heap is not self._pendingTimedCalls
            ):
                due = self.timeout()
                if due is not None and (timeout is None or due < timeout):
                    timeout = due
        if timeout is None:
            timeout = -1
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        handle = self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            try:
                handle(selectable, fd, event)
            except KeyboardInterrupt:
                raise
            except BaseException:
                log.err(system=_prefix(selectable))
        if self._afterEvents:
            self._runAfterEvents()

    doIteration = doPoll

    def _doReadOrWrite(self, selectable, fd, event):
        why = None
        inRead = False
        if event & self._POLL_DISCONNECTED and not (event & self._POLL_IN):
            if fd in self._reads:
                inRead = True
                why = CONNECTION_DONE
            else:
                why = CONNECTION_LOST
        else:
            try:
                if selectable.fileno() == -1:
                    why = _NO_FILEDESC
                else:
                    if event & self._POLL_IN:
                        why = selectable.doRead()
                        inRead = True
                    if not why and event & self._POLL_OUT:
                        why = selectable.doWrite()
                        inRead = False
            except BaseException:
                why = sys.exc_info()[1]
                log.err(system=_prefix(selectable))
        if why:
            self._disconnectSelectable(selectable, why, inRead)


def install() -> QuietEPollReactor:
    """Install L{QuietEPollReactor} as the global reactor."""
    from twisted.internet.main import installReactor

    reactor = QuietEPollReactor()
    installReactor(reactor)
    return reactor


def installIfFree() -> bool:
    """
    Install L{QuietEPollReactor} unless a reactor is already installed (or
    epoll is missing). Return whether the global reactor is now one.
    """
    if "twisted.internet.reactor" not in sys.modules:
        try:
            install()
        except Exception:
            return False
    return isInstalled()


def isInstalled() -> bool:
    """Is the global reactor a L{QuietEPollReactor}?"""
    reactor = sys.modules.get("twisted.internet.reactor")
    return isinstance(reactor, QuietEPollReactor)
