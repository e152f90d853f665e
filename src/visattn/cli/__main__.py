"""``python -m visattn.cli`` (what ``torchrun -m visattn.cli train ...`` runs)."""

import sys

from . import main

sys.exit(main())
