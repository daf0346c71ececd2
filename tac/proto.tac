# -*- mode: python -*-
"""
Deploy the GNP/1 server with ``twistd -ny tac/proto.tac``.

Configuration comes from a file, from environment variables, or both (the
environment wins). Every option of ``twistd proto --help`` is available:

* ``PROTO_CONFIG=/etc/proto.ini``: an INI file with a ``[proto]`` section,
  keys named like the options (``data-dir = /var/lib/proto``,
  ``listen = tcp:4433:interface=127.0.0.1 tcp6:4433:interface=\\:\\:1``).
* ``PROTO_<OPTION>`` environment variables, the option name upper-cased
  with ``-`` as ``_``: ``PROTO_DATA_DIR``, ``PROTO_LISTEN`` (several
  descriptions separated by spaces), ``PROTO_CERT``, ``PROTO_KEY``,
  ``PROTO_ALLOW``, ``PROTO_STORE``, ``PROTO_MAX_HEAD``, ``PROTO_MAX_BODY``,
  ``PROTO_HANDSHAKE_TIMEOUT``, ``PROTO_HEAD_TIMEOUT``, ``PROTO_BODY_TIMEOUT``,
  ``PROTO_MAX_PENDING_BODIES``, ``PROTO_IDLE_TIMEOUT``, ``PROTO_MAX_CONNECTIONS``,
  ``PROTO_RETAIN_CHANGES``, ``PROTO_WORKERS``, ``PROTO_METRICS``,
  ``PROTO_DRAIN_TIMEOUT``, ``PROTO_COMMANDS``; flags take ``1``/``0``
  (``PROTO_PLAIN_TRANSPORT=1``).
"""

import os

from twisted.application import service
from twisted.python import usage

from proto.deploy import optionsFromEnvironment
from proto.tap import makeService

try:
    options = optionsFromEnvironment(os.environ)
except usage.UsageError as e:
    # One line and exit status 1, not a traceback.
    raise SystemExit(f"proto.tac: {e}") from None
application = service.Application("proto")
makeService(options).setServiceParent(application)
