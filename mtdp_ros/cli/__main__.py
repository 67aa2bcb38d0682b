"""``python -m mtdp_ros.cli``: the ``mtdp`` command without the console script."""

import sys

from . import main

sys.exit(main())
