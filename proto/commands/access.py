"""
The access commands of PROTOCOL.md section 9: WHOAMI (every admitted
client), the admin commands PENDING, APPROVE and REVOKE, and ENROLL (every
admitted client, for itself).

The protocol has already checked each command's level before it runs
(L{proto.permissions}); these handlers do the work, through the server's
L{proto.access.AccessControl} (C{ctx.access}).
"""

from __future__ import annotations

import datetime
import os

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from proto.access import AccessControl, AccessError, describe, mergePending
from proto.admission import identityOfDER
from proto.commands.base import CommandError, CommandRegistry, ICommandContext, requireArgs
from proto.permissions import ADMIN, ANY, GrantSyntaxError, isoUTC, jsonBytes, parseGrantWords, whoami
from proto.store.base import StoreError
from proto.store.grants import GrantRow, GrantTakenError
from proto.wire.heads import Request

registry = CommandRegistry()

#: Largest ENROLL body worth parsing: one PEM certificate is a few KiB.
MAX_PEM_BYTES = 64 * 1024


def _access(ctx: ICommandContext) -> AccessControl:
    access = ctx.access
    if access is None:
        raise CommandError("This server keeps no approvals or enrolments")
    return access


def _refused(failure: Failure) -> Failure:
    """AccessError and store failures become a per-request ERR."""
    if isinstance(failure.value, (AccessError, GrantTakenError)):
        raise CommandError(str(failure.value))
    if isinstance(failure.value, StoreError):
        raise CommandError(f"The store failed, nothing was changed: {failure.value}")
    return failure


@registry.command("WHOAMI", level=ANY)
def whoAmI(ctx: ICommandContext, request: Request) -> bytes:
    """The connection's certificate and what it may do now."""
    requireArgs(request, 0, 0, "WHOAMI")
    return jsonBytes(whoami(ctx.identity, ctx.grant))


@registry.command("PENDING", level=ADMIN)
def pending(ctx: ICommandContext, request: Request) -> bytes:
    """
    The most recent refused certificates, newest first: this process's,
    and with C{--workers} the other workers' too (their snapshots in the
    run directory, L{proto.stats}).
    """
    requireArgs(request, 0, 0, "PENDING")
    own = _access(ctx).pending.listing()
    runDir = getattr(getattr(ctx, "factory", None), "runDir", None)
    if not runDir:
        return jsonBytes(own)
    from proto.stats import readSnapshots

    others = [snap.get("Pending", []) for snap in readSnapshots(runDir, skipPid=os.getpid())]
    return jsonBytes(mergePending([own, *others]))


@registry.command("APPROVE", level=ADMIN)
def approve(ctx: ICommandContext, request: Request) -> Deferred[bytes]:
    """C{APPROVE thumbprint [name] [can=LEVEL] [prefix=...]}: admit a certificate."""
    requireArgs(request, 1, None, "APPROVE thumbprint [name] [can=LEVEL] [prefix=P1,P2,...]")
    access = _access(ctx)
    try:
        grant = parseGrantWords(list(request.args[1:]))
    except GrantSyntaxError as e:
        raise CommandError(f"Malformed APPROVE: {e}") from None
    d = access.approve(request.args[0], grant, ctx.clock.seconds())
    return d.addCallbacks(lambda row: jsonBytes(describe(row.thumbprint, row.grant())), _refused)


@registry.command("REVOKE", level=ADMIN)
def revoke(ctx: ICommandContext, request: Request) -> Deferred[bytes]:
    """C{REVOKE thumbprint}: undo an approval or enrolment, cut its connections."""
    requireArgs(request, 1, 1, "REVOKE thumbprint")
    access = _access(ctx)
    d = access.revoke(request.args[0])
    return d.addCallbacks(
        lambda rows: jsonBytes(describe(access.thumbprint(request.args[0]), rows[0].grant())),
        _refused,
    )


def parseSuccessor(body: bytes, now: datetime.datetime) -> x509.Certificate:
    """
    The ENROLL body: exactly one PEM certificate, valid now.

    @raise CommandError: saying what is wrong with it.
    """
    if not body.strip():
        raise CommandError("ENROLL needs a body: the PEM of the successor certificate")
    if len(body) > MAX_PEM_BYTES:
        raise CommandError(f"ENROLL body is over {MAX_PEM_BYTES} bytes: not one certificate")
    if body.count(b"-----BEGIN ") != 1 or b"-----BEGIN CERTIFICATE-----" not in body:
        raise CommandError(
            "ENROLL body must be exactly one PEM certificate "
            "(-----BEGIN CERTIFICATE-----), and nothing else (no key)"
        )
    try:
        (cert,) = x509.load_pem_x509_certificates(body)
    except ValueError as e:
        raise CommandError(f"ENROLL body is not a readable PEM certificate: {e}") from None
    if now < cert.not_valid_before_utc:
        raise CommandError(
            f"The successor certificate is not yet valid: valid from {isoUTC(cert.not_valid_before_utc)}"
        )
    if now > cert.not_valid_after_utc:
        raise CommandError(
            f"The successor certificate expired on {isoUTC(cert.not_valid_after_utc)}"
        )
    return cert


@registry.command("ENROLL", level=ANY)
def enroll(ctx: ICommandContext, request: Request) -> Deferred[bytes]:
    """
    C{ENROLL} with the PEM of a successor certificate as the body: admit it
    with a copy of this certificate's name, level and prefixes.
    """
    requireArgs(request, 0, 0, "ENROLL (with the successor's PEM certificate as the body)")
    access = _access(ctx)
    now = ctx.clock.seconds()
    cert = parseSuccessor(
        request.body, datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
    )
    successor = identityOfDER(cert.public_bytes(Encoding.DER))

    def reply(row: GrantRow) -> bytes:
        return jsonBytes(
            {
                "Sha1": successor.sha1,
                "Sha256": successor.sha256,
                "Name": row.name,
                "Can": row.level,
                "NotAfter": isoUTC(successor.notAfter),
            }
        )

    d = access.enroll(ctx.identity, ctx.grant, successor, now)
    return d.addCallbacks(reply, _refused)
