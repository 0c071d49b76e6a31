"""A process's own peak RSS, for the benchmarks: VmHWM, which exec resets. Not rusage's ru_maxrss: Linux carries
that over fork and exec, so a child started by a benchmark that has just generated gigabytes would report the
parent's size.

    python benchmarks/peak_rss.py OUT -m MODULE ARGS...   # run a module, write its peak RSS (bytes) to OUT
    python benchmarks/peak_rss.py OUT -c SCRIPT ARGS...   # the same for a script
"""

from __future__ import annotations

import atexit
import runpy
import sys
from pathlib import Path


def peak_rss_bytes() -> int:
    """This process's peak RSS so far (Linux only)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def main() -> None:
    out, how, what, *rest = sys.argv[1:]
    atexit.register(lambda: Path(out).write_text(str(peak_rss_bytes())))  # after sys.exit too
    sys.argv = [what, *rest]
    if how == "-m":
        runpy.run_module(what, run_name="__main__", alter_sys=True)
    else:
        exec(compile(what, "<script>", "exec"), {"__name__": "__main__"})


if __name__ == "__main__":
    main()
