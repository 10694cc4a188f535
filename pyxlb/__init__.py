"""pyxlb: an XDP layer-4 load balancer (Maglev hashing, flow tracking, direct server return)."""

__version__ = "0.1.0"
