"""``python -m dlclinic.cli``: the ``dlclinic`` command line."""

import sys

from dlclinic.cli import main

sys.exit(main())
