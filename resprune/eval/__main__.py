"""``python -m resprune.eval``: the budget-sweep runner (see ``resprune.eval.sweep``)."""

import sys

from .sweep import main

sys.exit(main())
