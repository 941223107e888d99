"""Benchmark regd against the reference registry (Distribution), on this machine.

    python bench/run.py [--quick] [--regd-workers N] [--auth none|basic|token] [--only WORKLOAD ...]

Both registries are started here on temporary storage and free ports of 127.0.0.1; every
workload runs on one, then on the other. A table of both results, their ratio and the
targets is printed, and everything measured is written to bench/results/<timestamp>.json.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
