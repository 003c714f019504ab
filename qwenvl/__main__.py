"""`python -m qwenvl ...` (also what torchrun launches)."""

import sys

from qwenvl.cli import main

sys.exit(main())
