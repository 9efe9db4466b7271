"""``python -m xtc_ext.data.prepare``: see :mod:`xtc_ext.data.prepare`."""

import sys

from . import main

sys.exit(main())
