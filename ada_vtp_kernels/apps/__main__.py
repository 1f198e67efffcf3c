"""``python -m ada_vtp_kernels.apps``: the ``ada-vtp`` command (`ada_vtp_kernels.apps.cli`)."""

import sys

from .cli import main

sys.exit(main())
