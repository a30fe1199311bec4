"""`python -m labkit.experiments.deploy_bert`: train, export and measure, writing the result file."""

import sys

from labkit.experiments.deploy_bert.driver import main

sys.exit(main())
