"""The broker's picture of the VS (vsnetd/broker/server.py, ``Broker.update``): what an
update keeps and what it builds again, without root or a running daemon."""

from __future__ import annotations

from typing import Any, cast

from vsnetd.broker.server import Broker, Served
from vsnetd.compile import compile_config
from vsnetd.config import Config
from vsnetd.kernel import Kernel


def pbr(server_id: int, address: str) -> dict[str, Any]:
    return {"id": server_id, "mode": "pbr", "uplink": "eth0",
            "addresses": [{"address": address}]}


def picture(servers: dict[str, dict[str, Any]]) -> tuple[Config, dict[str, Served]]:
    config = Config.model_validate({"version": 1, "servers": servers})
    desired = compile_config(config)
    return config, {name: Served(server, config.servers[name], "in-sync")
                    for name, server in desired.servers.items()}


def test_an_update_builds_again_only_the_vs_that_changed() -> None:
    broker = Broker(cast(Kernel, None))
    _config, served = picture({"a": pbr(1, "10.0.0.5/24"), "b": pbr(2, "10.0.0.6/24"),
                               "c": pbr(3, "10.0.0.7/24")})
    broker.update(served, 1)
    first = dict(broker.targets)
    assert broker.reply_head == b'{"v":1,"ok":true,"generation":1,"sockets":['
    head, tail = first["a"].replies["10.0.0.5"]["tcp"]
    assert head == b'{"server":"a","address":"10.0.0.5","port":'
    assert tail.startswith(b',"proto":"tcp","family":4,"mark":') and b"generation" not in tail

    _config, edited = picture({"b": pbr(2, "10.0.0.16/24")})
    state_only = Served(served["c"].desired, served["c"].config, "failed")
    broker.update({"a": served["a"], "b": edited["b"], "c": state_only}, 2)
    assert broker.reply_head == b'{"v":1,"ok":true,"generation":2,"sockets":['
    assert broker.targets["a"] is first["a"]  # the very same VS: kept
    assert broker.targets["c"] is first["c"]  # its state changed, not what requests need
    assert broker.targets["b"] is not first["b"]
    assert broker.targets["b"].addresses == (("10.0.0.16", 2),)

    broker.update({"a": served["a"]}, 3)
    assert list(broker.targets) == ["a"] and broker.targets["a"] is first["a"]
