#!/usr/bin/env python
"""Entry point: ``python run_benchmark.py`` takes the same flags as ``xbench run``."""

import sys

from xbench.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
