"""Config texts that attack whoever reads them (shared by the CLI's and the daemon's tests)."""

from __future__ import annotations

# Above the address space a reader gets in those tests (the daemon's 64 MiB more than it
# had, the CLI's 320 MiB in all): reading 200,000 addresses takes ~600 MiB.
COSTLY_ADDRESSES = 200_000


def costly_config(addresses: int = COSTLY_ADDRESSES) -> str:
    """A file far below settings.max_file_bytes (6 MiB for 200,000) whose reading takes
    hundreds of MiB: one VS with that many addresses (in the end refused: a VS holds 15)."""
    lines = ["version: 1", "servers:", "  big:", "    id: 7", "    mode: pbr",
             "    uplink: eth0", "    addresses:"]
    lines += [f"      - address: 10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}/32"
              for n in range(addresses)]
    return "\n".join(lines) + "\n"
