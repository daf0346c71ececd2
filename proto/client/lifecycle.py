"""
C{proto-cli} options for the certificate lifecycle (PROTOCOL.md section 9).

  - C{proto-cli --mint NAME --enroll}: renewal without an outage. Mints a
    successor certificate and key, connects with the I{current}
    certificate (C{--cert}/C{--key}, default the data directory's client)
    and ENROLLs the successor, which the server then admits with the same
    name, level and prefixes. Prints the files written and what the server
    admitted.

C{PENDING}, C{APPROVE thumbprint name can=read}, C{REVOKE thumbprint} and
C{WHOAMI} need nothing special: they are ordinary one-shot requests
(C{proto-cli PENDING}), their JSON replies pretty-printed.

L{proto.client.cli} calls L{addArguments} when it builds its parser and
L{run} before anything else; L{run} returns C{None} when the options are
not for it.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

from proto import certs

EPILOG = """\
renewal (the server admits the successor with your name, level, prefixes):
  proto-cli --mint alice-2027 --enroll [--cert alice.pem --key alice.key]
      writes alice-2027.pem and alice-2027.key, enrols them; connect with
      them from now on (a later --enroll replaces and revokes this one)

approvals (admin):
  proto-cli PENDING                          recently refused certificates
  proto-cli APPROVE <thumbprint> name can=read prefix=orders/
  proto-cli REVOKE <thumbprint>
"""


def addArguments(tools: Any) -> None:
    """Add C{--enroll} to the certificate-tools argument group."""
    tools.add_argument(
        "--enroll", action="store_true",
        help="with --mint: enrol the new certificate as the successor of the one "
        "you connect with (--cert/--key), so the server admits it with the same rights",
    )


def run(options: Any, openClient: Callable[[Any], Any], fail: Callable[[str, int], int],
        statuses: dict[str, int]) -> int | None:
    """
    Handle C{--mint NAME --enroll}; C{None} when the options ask for
    something else.

    @param openClient: connects as the command line says (cli.openClient).
    @param fail: prints a message and returns the exit status.
    @param statuses: C{usage}, C{err}, C{ok} exit statuses.
    """
    if not getattr(options, "enroll", False):
        return None
    if not options.mint:
        return fail("--enroll goes with --mint NAME (the successor to mint)", statuses["usage"])
    return mintAndEnroll(options, openClient, fail, statuses)


def mintAndEnroll(options: Any, openClient: Callable[[Any], Any], fail: Callable[[str, int], int],
                  statuses: dict[str, int]) -> int:
    from proto.client.cli import UsageError, _writeNew, mintPaths
    from proto.client.errors import ServerError

    try:
        certPath, keyPath = mintPaths(options.mint, options.out)  # as a plain --mint
    except UsageError as e:
        return fail(str(e), statuses["usage"])
    # Connect first: a wrong --cert or an unreachable server leaves no files.
    client = openClient(options)
    try:
        minted = certs.mint(options.mint, days=options.days)
        try:
            _writeNew(keyPath, minted.keyPEM, 0o600)
            _writeNew(certPath, minted.certPEM, 0o644)
        except OSError as e:
            return fail(f"cannot write the certificate: {e}", statuses["usage"])
        print(f"wrote {certPath}", flush=True)
        print(f"wrote {keyPath}", flush=True)
        try:
            reply = client.enroll(minted.certPEM, timeout=options.timeout)
        except ServerError as e:
            return fail(f"ERR {e.reason} (the files stay; nothing was enrolled)", statuses["err"])
    finally:
        client.close()
    admitted = reply.json()
    rights = f"can={admitted['Can']}"
    print(
        f"enrolled {admitted['Sha1']} as {admitted['Name'] or options.mint!r} ({rights}), "
        f"valid until {admitted['NotAfter']}",
        flush=True,
    )
    print(f"from now on connect with --cert {certPath} --key {keyPath}", file=sys.stderr, flush=True)
    return statuses["ok"]
