"""``python -m bsatnp``: the command line (also under ``torchrun ... -m bsatnp train``)."""

import sys

from bsatnp.cli import main

sys.exit(main())
