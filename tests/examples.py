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
