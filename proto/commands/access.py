"""
The access commands of PROTOCOL.md section 9: WHOAMI (every admitted
client) and, with the server's L{proto.access.AccessControl}, the
certificate lifecycle: PENDING, APPROVE, REVOKE (admin) and ENROLL (every
admitted client, for itself).

The protocol has already checked each command's level before it runs
(L{proto.permissions}); these handlers only do the work.
"""

from __future__ import annotations

from typing import Any

from proto.commands.base import CommandRegistry, requireArgs
from proto.permissions import ANY, jsonBytes, whoami

registry = CommandRegistry()


@registry.command("WHOAMI", level=ANY)
def whoAmI(ctx: Any, request: Any) -> bytes:
    """The connection's certificate and what it may do now."""
    requireArgs(request, 0, 0, "WHOAMI")
    return jsonBytes(whoami(ctx.identity, ctx.grant))
