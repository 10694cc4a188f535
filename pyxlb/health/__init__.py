"""Health checks of standalone VIPs' backends, and the path through the tunnel they take."""
