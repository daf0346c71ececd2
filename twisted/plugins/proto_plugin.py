"""
The twistd plugin: C{twistd -n proto [options]} runs the GNP/1 server.

Deliberately tiny: twistd imports every plugin module to list them, so the
real work lives in L{proto.tap}, imported only when this plugin is used.
There is no C{__init__.py} in C{twisted/} or C{twisted/plugins/}: either
would hide Twisted's own packages (see shared/TWISTED_NOTES.md, section 4).
"""

from twisted.application.service import ServiceMaker

proto = ServiceMaker(
    "GNP/1 server",
    "proto.tap",
    "GNP/1: TLS-secured text protocol for RPC and server push, clients admitted by thumbprint",
    "proto",
)

# ``twistd --reactor proto-epoll``: the epoll reactor without the per-event
# log context (proto/speed/reactor.py). ``twistd proto`` installs it by
# itself; name it to use it with ``twistd -ny tac/proto.tac``.
from twisted.application.reactors import Reactor  # noqa: E402

protoEpoll = Reactor(
    "proto-epoll",
    "proto.speed.reactor",
    "epoll without the per-event log context (the GNP/1 server's speed lever)",
)
