#!/usr/bin/env python3
"""A benchmark of this tree against the same benchmark of another revision, in one run.

    bench/against.py REV SCRIPT [ARGS...]      e.g.  bench/against.py c8ff780 pbr.py

How it measures: docs/benchmarks.md (`bench/against.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measures(tree: Path, script: str, args: list[str]) -> dict[str, dict[str, float | str]]:
    """``bench/SCRIPT ARGS --json`` of ``tree``, its own sources first on the import path."""
    result = subprocess.run([sys.executable, str(tree / "bench" / script), *args, "--json"],
                            cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"bench/against.py: {script} of {tree} failed:\n{result.stderr[-2000:]}")
    found: dict[str, dict[str, float | str]] = json.loads(result.stdout)["measures"]
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("rev", help="the revision to compare with (git rev)")
    parser.add_argument("script", help="the benchmark, a file name in bench/ (e.g. pbr.py)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each (default 3)")
    parser.add_argument("--limit", type=float, default=1.10,
                        help="this tree / REV at most (default 1.10)")
    args, script_args = parser.parse_known_args()
    samples: dict[str, dict[str, list[float]]] = {"old": {}, "new": {}}
    labels: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="vsnet-against-") as tmp:
        old = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--quiet", "--detach",
                        str(old), args.rev], check=True)
        try:
            for round_number in range(1, args.rounds + 1):
                for side, tree in (("old", old), ("new", ROOT)):  # REV first
                    print(f"round {round_number}/{args.rounds}: {side}", file=sys.stderr)
                    for name, measure in measures(tree, args.script, script_args).items():
                        samples[side].setdefault(name, []).append(float(measure["median_s"]))
                        labels.setdefault(name, str(measure["label"]))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)],
                           check=False)
    print(f"bench/{args.script} {' '.join(script_args)}: this tree against {args.rev}, "
          f"medians of {args.rounds} interleaved runs each")
    print(f"{'measure':48} {args.rev[:12]:>12} {'this tree':>12} {'ratio':>7}")
    misses = 0
    for name, label in labels.items():
        if name in samples["old"] and name in samples["new"]:
            before, after = (statistics.median(samples[side][name]) for side in ("old", "new"))
            verdict = "PASS" if after / before <= args.limit else "MISS"
            misses += verdict == "MISS"
            print(f"{label[:48]:48} {before * 1000:9.1f} ms {after * 1000:9.1f} ms "
                  f"{after / before:6.2f}x  {verdict}")
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
