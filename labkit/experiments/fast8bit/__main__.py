"""`python -m labkit.experiments.fast8bit`: run the benchmark, or merge sessions' result files."""

import sys

from labkit.experiments.fast8bit.driver import main

sys.exit(main())
