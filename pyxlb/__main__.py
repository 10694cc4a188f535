"""`python -m pyxlb`: the same as the `pyxlb` command."""

from pyxlb.cli import main

main()
