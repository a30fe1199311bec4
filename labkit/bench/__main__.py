"""`python -m labkit.bench ...` (and the `labkit-bench` script): the benchmark command line, labkit.cli."""

import sys

from labkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
