"""Run a command and report its wall time and the peak memory of its whole process tree.

Usage: python benchmarks/peak_memory.py -- scalinglab sweep experiments/sweeps/quickstart.yaml

The embedded Ray's processes (GCS, raylet, workers) are descendants of the driver, so the
tree covers everything the sweep starts. Two sums are sampled every ``--interval`` seconds:
RSS (counts shared library pages once per process: an upper bound) and PSS (shares them
out: the honest figure for "how much memory does this take").
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import psutil


def tree_memory(root: psutil.Process) -> tuple[int, int]:
    rss = pss = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            info = proc.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return rss, pss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give a command after --")
    started = time.monotonic()
    proc = subprocess.Popen(command)
    root = psutil.Process(proc.pid)
    peak_rss = peak_pss = 0
    while proc.poll() is None:
        rss, pss = tree_memory(root)
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(args.interval)
    wall = time.monotonic() - started
    print(f"exit {proc.returncode}; wall {wall:.1f} s; peak memory of the process tree: "
          f"PSS {peak_pss / 2**30:.2f} GiB, RSS {peak_rss / 2**30:.2f} GiB", file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
