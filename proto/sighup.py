"""
SIGHUP: "re-read your files now", as daemons do.

L{SighupService} installs a SIGHUP handler while it runs and calls every
action registered with L{SighupService.add} on the reactor thread, each
failure logged and the rest still run. The server registers the
allow-list reload (L{proto.admission.AllowListFile.reload}); other files
that can be reloaded (certificates) register their own action. The
service is named C{"sighup"} in the server's service tree
(C{top.getServiceNamed("sighup").add(...)}).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any, Callable

from twisted.application import service
from twisted.logger import Logger

#: The service's name in the tree L{proto.tap.makeService} builds.
NAME = "sighup"


class SighupService(service.Service):
    """Run registered actions on SIGHUP."""

    log = Logger()

    def __init__(self, reactor) -> None:
        self._reactor = reactor
        self._actions: list[tuple[str, Callable[[], object]]] = []
        self._previous: Callable[[int, FrameType | None], Any] | int | None = None
        self._installed = False
        self.setName(NAME)

    def add(self, what: str, action: Callable[[], object]) -> None:
        """Call C{action()} on every SIGHUP; C{what} names it in the log."""
        self._actions.append((what, action))

    def startService(self) -> None:
        super().startService()
        # Python allows signal handlers only in the main thread (an
        # embedding program may start us elsewhere: then there is no SIGHUP).
        if hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGHUP, self._received)
            self._installed = True

    def stopService(self):
        if self._installed:
            signal.signal(signal.SIGHUP, self._previous or signal.SIG_DFL)
            self._installed = False
        return super().stopService()

    def _received(self, signum, frame) -> None:
        # A Python signal handler runs between bytecodes of the main thread,
        # possibly inside reactor code: do the work on the next iteration.
        self._reactor.callFromThread(self.reloadAll)

    def reloadAll(self) -> None:
        """What a SIGHUP does: every action, in order of registration."""
        self.log.info("SIGHUP: reloading {what}", what=", ".join(w for w, _ in self._actions))
        for what, action in self._actions:
            try:
                action()
            except Exception:
                self.log.failure("SIGHUP: reloading {what} failed", what=what)
