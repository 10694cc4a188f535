"""Health checks of standalone VIPs' backends: the checker (checker.py), the path through
the tunnel they take (tunnel.py), and the service `pyxlb serve` runs (service.py)."""
