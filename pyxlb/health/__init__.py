"""Health checks of standalone VIPs' backends (docs/health.md): checker.py, tunnel.py, service.py."""
