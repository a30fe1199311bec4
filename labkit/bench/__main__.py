"""`python -m labkit.bench ...`: the benchmark command line (labkit.bench.main)."""

import sys

from labkit.bench import main

sys.exit(main())
