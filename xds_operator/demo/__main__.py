"""`python -m xds_operator.demo`: the local demo (what `make run` does)."""

import sys

from xds_operator.demo.main import main

sys.exit(main())
