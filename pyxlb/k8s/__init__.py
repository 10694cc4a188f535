"""Kubernetes: watching the API, translating objects to DesiredState, allocating IPs."""
