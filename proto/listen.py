"""
C{--listen} descriptions: checking them when the options are parsed, and
turning them into endpoints with the server's defaults.

A description is a Twisted endpoint string (C{tcp:4433:interface=127.0.0.1},
C{tcp6:4433:interface=\\:\\:1}, C{unix:/run/proto.sock}, ...). Two things
differ from plain C{serverFromString}:

* the listen backlog defaults to L{BACKLOG} (1024, as the default
  listeners use) instead of Twisted's 50, unless the description says
  C{backlog=} itself or its endpoint type takes none (C{systemd:});
* a description Twisted cannot parse is refused while the options are
  parsed (L{problemWith}), so C{twistd} prints one line instead of a
  traceback at start-up.
"""

from __future__ import annotations

import re

from twisted.internet import endpoints
from twisted.internet.interfaces import IStreamServerEndpoint

#: Pending-connection queue of every listener (Twisted's default is 50:
#: connects then stall for a second in a burst).
BACKLOG = 1024

_SAYS_BACKLOG = re.compile(r"(?:^|:)backlog=")


def serverEndpoint(reactor, description: str) -> IStreamServerEndpoint:
    """
    The endpoint for C{description}, with a backlog of L{BACKLOG} unless it
    names its own.

    @raise ValueError: unknown endpoint type or malformed description.
    @raise TypeError: arguments the endpoint type does not take.
    """
    if not _SAYS_BACKLOG.search(description):
        try:
            return endpoints.serverFromString(reactor, f"{description}:backlog={BACKLOG}")
        except TypeError:
            pass  # This endpoint type has no backlog (systemd:): use it as given.
    return endpoints.serverFromString(reactor, description)


def problemWith(description: str) -> str | None:
    """
    Why C{description} cannot be listened on, in one line, or C{None} if
    Twisted can parse it. (Whether the address is free is only known
    when listening.)
    """
    try:
        # Parsing stores the reactor without using it; the real one is not
        # imported here, as option parsing must not install a reactor.
        serverEndpoint(None, description)
    except IndexError as e:
        return (
            f"--listen {description!r}: {e} (no inherited socket with that index: "
            "systemd: descriptions need socket activation)"
        )
    except (ValueError, TypeError, KeyError) as e:
        hint = ""
        if "multiple values" in str(e) or re.search(r"(?<!\\)::", description):
            hint = r" (escape the colons of an address: interface=\:\:1)"
        return f"--listen {description!r}: {e}{hint}"
    return None
