"""What only the tests and the benchmarks use, and pyxlb does not ship: the pure model of the
balancer (model), the Kubernetes API stand-in (standin, with its authentication and RBAC in
standin_auth and its admission in standin_admission), and the Kubernetes lab (k8slab)."""
