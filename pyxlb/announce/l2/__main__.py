"""`python -m pyxlb.announce.l2 --help`: the lab and debugging tool (tool.py here)."""

import sys

from .tool import main

sys.exit(main())
