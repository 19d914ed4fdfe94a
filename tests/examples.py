"""Config files the tests share."""

from __future__ import annotations

ISSUE_EXAMPLE = """\
version: 1
settings:                  # all optional; defaults documented in README
  table_base: 10000        # route tables vsnet may use start here
  priority_base: 10000     # rule priorities vsnet may use start here
  mark_base: 0x5600000     # fwmarks vsnet hands out start here
servers:
  nas1:
    id: 1                  # stable small integer chosen by the operator
    mode: pbr              # pbr | netns
    uplink: eth0           # parent device in the root namespace
    addresses:
      - address: 10.0.0.5/24
        gateway: 10.0.0.1  # optional: where replies from this address go (reflection)
      - address: 10.0.1.5/24
        gateway: 10.0.1.1
      - address: 2001:db8:5::5/64
        gateway: 2001:db8:5::1
    gateway: 10.0.1.1      # optional: default route for the VS's own outgoing (marked) traffic
    routes:                # optional extra routes
      - to: 192.168.50.0/24
        via: 10.0.0.1
"""


# Two netns VS with the same address on two uplinks (the paper's Figure 2), one of them with
# every per-namespace kind: routes, a sysctl, a resolver.
TWO_NETNS_VS = """\
version: 1
servers:
  a:
    id: 1
    mode: netns
    uplink: eth0
    addresses: [{address: 10.1.1.5/24}, {address: 2001:db8:1::5/64}]
    gateway: [10.1.1.1, 2001:db8:1::1]
    routes: [{to: 192.168.0.0/16, via: 10.1.1.254}]
    sysctl: {net.ipv4.conf.all.rp_filter: 1}
    dns: {servers: [10.1.1.53], search: [corp.example]}
  b:
    id: 2
    mode: netns
    uplink: eth1
    addresses: [{address: 10.1.1.5/24}]
    gateway: 10.1.1.1
"""
