"""Config texts that attack whoever reads them (shared by the CLI's and the daemon's tests)."""

from __future__ import annotations


def costly_config(addresses: int) -> str:
    """A file far below settings.max_file_bytes (6 MiB for 200,000 addresses) whose reading
    takes many times its size (200,000: ~400 MiB more than a small file; 60,000: ~80 MiB):
    one VS with that many addresses (in the end refused: a VS holds 15)."""
    lines = ["version: 1", "servers:", "  big:", "    id: 7", "    mode: pbr",
             "    uplink: eth0", "    addresses:"]
    lines += [f"      - address: 10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}/32"
              for n in range(addresses)]
    return "\n".join(lines) + "\n"
