"""
Admission glue: from "TLS is up" to the greeting, and a connection's rights.

Why its own module: the allow-list's judgement is L{proto.admission}'s
(section 2) and the rights' check L{proto.permissions}' (section 9); what
a connection does with them is this mixin's one job, apart from the
connection's input and output (L{proto.protocol}):

  - L{Admitting.handshakeCompleted}: judge the certificate (also for a
    resumed session), then greet with C{OK} or refuse in words and close
    (PROTOCOL.md section 2); the C{Admitted} and C{Refused} log lines
    (the audit trail) and the handshake timeout's refusal;
  - L{Admitting.setGrant}: the allow-list changed what this certificate
    may do (section 9), and the tables the dispatcher reads for it.

L{Admitting} is a mixin of L{proto.protocol.GNPServerProtocol}, like
L{proto.dispatch.Dispatcher} and L{proto.ending.Ending}; what it uses of
its host is declared below for the type checker only. It comes before
C{Dispatcher} in the host's bases: C{displayName} is declared there.
"""

from __future__ import annotations

from time import perf_counter, time
from typing import TYPE_CHECKING, Any, Mapping

from twisted.logger import Logger, LogLevel

from proto import wire
from proto.admission import Identity, admit, identityOf
from proto.permissions import Grant
from proto.states import CLOSING, HANDSHAKING, OPEN, READY
from proto.stats import REFUSED_HANDSHAKE_TIMEOUT
from proto.timers import HANDSHAKE, IDLE
from proto.tls import peerCertificateDER, peerCertificateSHA256

if TYPE_CHECKING:
    from proto.commands.base import Handler
    from proto.commands.base import CommandRegistry
    from proto.server import GNPServerFactory, ServerConfig
    from proto.stats import ServerStats
    from proto.subscriptions import Subscriptions
    from proto.timers import Timers
    from twisted.internet.interfaces import IReactorTime

__all__ = ["Admitting", "ADMITTED", "printablePeer", "fastLogFor"]


def printablePeer(address: Any) -> str:
    """C{host:port} for logs, with IPv4-mapped IPv6 addresses unmapped."""
    host = getattr(address, "host", None)
    if host is None:
        return str(address)
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    if ":" in host:
        return f"[{host}]:{address.port}"
    return f"{host}:{address.port}"


#: The admission line of every admitted connection (section 2's audit trail).
ADMITTED = "Admitted {peer} sha1={sha1} cn={cn!r} {grant}"


def _logInfo(protocol: Admitting, format: str, fields: dict[str, Any]) -> None:
    """
    C{protocol.log.info(format, **fields)}: the same event (the keys
    C{Logger.emit} adds, C{log_source} the protocol) to the same observer,
    for the line every connection logs. Less what C{Logger} does per call
    that cannot matter here: a new bound C{Logger} per C{protocol.log}
    access, the level's validity check, the keyword arguments copied
    twice (in process 6.5 -> 2.8 us per line).
    """
    if type(protocol).__dict__.get("log") is not _CLASS_LOG:
        # A subclass's own logger, or one put in place since: the general way.
        protocol.log.info(format, **fields)
        return
    log = _BOUND_LOG
    fields["log_logger"] = log
    fields["log_level"] = LogLevel.info
    fields["log_namespace"] = log.namespace
    fields["log_source"] = protocol
    fields["log_format"] = format
    fields["log_time"] = time()
    log.observer(fields)


#: The host class's logger, and the same bound to the class once (its
#: namespace, C{proto.protocol.GNPServerProtocol}, and its observer), for
#: L{_logInfo}; set by L{fastLogFor}. Until then nothing is the class's
#: logger, so every line goes the general way.
_CLASS_LOG: object = object()
_BOUND_LOG: Logger = Logger()


def fastLogFor(cls: type) -> None:
    """
    Let L{_logInfo} make the events of C{cls}'s own logger (its C{log}
    class attribute) directly: called once, for
    L{proto.protocol.GNPServerProtocol}, when it is defined.
    """
    global _CLASS_LOG, _BOUND_LOG
    _CLASS_LOG = cls.__dict__["log"]
    _BOUND_LOG = cls.log  # type: ignore[attr-defined]


class Admitting:
    """
    Admission and rights, mixed into the connection.
    """

    if TYPE_CHECKING:
        # What the host (the connection) provides.
        log: Logger
        state: str
        transport: Any
        factory: GNPServerFactory
        config: ServerConfig
        registry: CommandRegistry
        clock: IReactorTime
        stats: ServerStats
        subscriptions: Subscriptions
        identity: Identity | None
        grant: Grant
        peer: str
        _free: Mapping[str, Handler]
        _timers: Timers
        _since: float
        _lastActivity: float

        def _enter(self, state: str) -> None: ...
        def _closeWith(self, data: bytes) -> None: ...
        def _idleCheck(self) -> None: ...

    # -- admission (PROTOCOL.md section 2) ---------------------------------

    def handshakeCompleted(self) -> None:
        """
        TLS is up (also for a resumed session): judge the certificate
        against the current allow-list (PROTOCOL.md section 2), then greet
        with C{OK} or refuse in words and close.
        """
        timers = self._timers
        if self.state is not HANDSHAKING:
            timers.stop(HANDSHAKE)
            return
        self.stats.handshake.observe(perf_counter() - self._since)
        # Behind HAProxy (--listen haproxy:...) the PROXY header is parsed
        # after connectionMade, so only now does getPeer() give the
        # client's address rather than HAProxy's (Twisted #12501).
        self.peer = printablePeer(self.transport.getPeer())
        transport = self.transport
        digest = peerCertificateSHA256(transport)
        if digest is not None:
            self.identity = identityOf(digest, lambda: peerCertificateDER(transport))
        reason = self.factory.overloadReason()
        now = self.clock.seconds()
        if reason is None:
            grant, reason = admit(self.identity, self.factory.allowList(), now)
            if grant is not None:
                self._grant(grant)
            else:
                refused = getattr(self.factory, "certificateRefused", None)
                if refused is not None and self.identity is not None:
                    refused(self.identity, self.peer, reason)
        who = self.identity
        if reason is not None:
            timers.stop(HANDSHAKE)
            self.log.info(
                "Refused {peer} sha1={sha1} cn={cn!r}: {reason}",
                peer=self.peer, sha1=who and who.sha1, cn=who and who.commonName,
                reason=reason, admitted=False, event="admission",
            )
            self.stats.refusedFor(reason)
            self._closeWith(wire.encodeGreeting(reason))
            return
        assert who is not None
        grant = self.grant
        _logInfo(
            self, ADMITTED,
            {"peer": self.peer, "sha1": who.sha1, "cn": who.commonName, "admitted": True,
             "grant": grant.attributes(), "name": grant.name, "event": "admission"},
        )
        self._enter(READY)
        self._since = self._lastActivity = now
        self.stats.certificateSeen(who)
        # The host is the factory's GNPServerProtocol (see Dispatcher._dispatch).
        self.factory.connectionAdmitted(self)  # type: ignore[arg-type]
        self.transport.write(wire.encodeGreeting())
        if self.config.idleTimeout:
            # The handshake's DelayedCall becomes the idle timer's (see
            # Timers.move: no cancelled call left in the reactor's heap).
            timers.move(HANDSHAKE, IDLE, self.config.idleTimeout, self._idleCheck)
        else:
            timers.stop(HANDSHAKE)

    @property
    def admittedAt(self) -> float:
        """When the connection was admitted (the clock's seconds; CLIENTS)."""
        return self._since if self.state is not HANDSHAKING else 0.0

    # -- rights (PROTOCOL.md section 9) -----------------------------------

    def setGrant(self, grant: Grant) -> None:
        """
        The allow-list changed what this certificate may do (section 9):
        the next request is checked against C{grant}, and standing
        subscriptions (WATCH) are told, so that one now outside the
        prefixes ends.
        """
        if grant == self.grant or self.state not in OPEN:
            return
        self.log.info(
            "Rights of {peer} sha1={sha1} changed: {grant}",
            peer=self.peer, sha1=self.identity and self.identity.sha1,
            grant=grant.attributes(),
        )
        self._grant(grant)
        self.subscriptions.regrant(grant)

    def _grant(self, grant: Grant) -> None:
        self.grant = grant
        self._free = self.registry.unchecked(grant.rank, grant.prefixes is None)

    def displayName(self) -> str:
        """The name on the allow-list, else the certificate's CN (for messages)."""
        if self.grant.name:
            return self.grant.name
        return self.identity.commonName if self.identity is not None else "?"

    # -- the handshake timeout (PROTOCOL.md section 2) --------------------

    def _handshakeTimedOut(self) -> None:
        if self.state is HANDSHAKING:
            self.peer = printablePeer(self.transport.getPeer())
            self.log.info("Handshake timeout from {peer}", peer=self.peer)
            refused = self.stats.refused
            refused[REFUSED_HANDSHAKE_TIMEOUT] = refused.get(REFUSED_HANDSHAKE_TIMEOUT, 0) + 1
            self._enter(CLOSING)
            self.transport.unregisterProducer()
            self.transport.abortConnection()
