"""``python -m ada_vtp_kernels``: the ``ada-vtp`` command (`ada_vtp_kernels.cli`)."""

import sys

from .cli import main

sys.exit(main())
