"""Errors of pyxlb's own. Kernel and libbpf failures are built-in OSError subclasses instead."""


class PyxlbError(Exception):
    """Base of every error pyxlb raises for reasons of its own (bad input, bad state)."""
