"""The socket broker: ready sockets for the application, over SCM_RIGHTS.

The application (one process serving many VS, without root and without ``setns``) asks
``/run/vsnet/broker.sock`` (SOCK_SEQPACKET) for sockets and gets them ready: bound to a
VS address with ``SO_MARK`` = the VS mark (pbr), or created inside the VS's namespace
(netns). The protocol is ``docs/broker-protocol.md`` and ``schemas/broker.schema.json``.

Four modules, each depending only on those above it:

* :mod:`vsnetd.broker.protocol`: constants, request parsing, errors, reply framing (the
  standard library only: the application's client, :mod:`vsnetd.client`, needs nothing
  else);
* :mod:`vsnetd.broker.access`: who may use which VS (peer credentials, ``sockets:``);
* :mod:`vsnetd.broker.sockets`: a VS's data cached per config generation, and making its
  sockets (marked, or inside its namespace);
* :mod:`vsnetd.broker.server`: the connections, driven by the daemon's select loop.

This package imports only the protocol module, so that ``from vsnetd.broker import
BROKER_PATH`` stays as light as the client; the server's names (``Broker``, ``Client``,
``Served``) are found in :mod:`vsnetd.broker.server` on first use, so that the daemon's
``from vsnetd.broker import Broker, Client, Served`` works as before the split.
"""

from __future__ import annotations

from vsnetd.broker.protocol import (
    BROKER_GROUP,
    BROKER_PATH,
    MAX_FDS,
    MAX_MESSAGE,
    OPS,
    VERSION,
    BrokerError,
    Request,
    parse_request,
)

TYPE_CHECKING = False  # typing stays unimported at run time (the client's import is timed)
if TYPE_CHECKING:
    from typing import Any

    from vsnetd.broker.server import Broker, Client, Served

__all__ = ["BROKER_GROUP", "BROKER_PATH", "MAX_FDS", "MAX_MESSAGE", "OPS", "VERSION",
           "Broker", "BrokerError", "Client", "Request", "Served", "parse_request"]
_SERVER_NAMES = ("Broker", "Client", "Served")


def __getattr__(name: str) -> Any:
    if name in _SERVER_NAMES:
        from vsnetd.broker import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
