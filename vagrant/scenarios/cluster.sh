#!/bin/sh
# Scenario 2, the same Service switched to externalTrafficPolicy Cluster. Expected: every
# Ready node is a backend, node3 included, each taking an even third of the connections at
# its entry; the node's service proxy then picks any pod, so the pods still answer 2:1 by
# node; and the pods no longer see the client's address but the entry node's (SNAT).
# Usage: scenarios/cluster.sh [CONNECTIONS]   (scenarios/local.sh switches back)
set -eu
# shellcheck source=vagrant/scenarios/lib/common.sh
. "$(dirname "$0")/lib/common.sh"
count=${1:-300}

step "Service echo switched to externalTrafficPolicy Cluster"
kube ready
kube workload Cluster
step "the router's route to the VIPs: now a next hop per Ready node"
routes
step "$count connections from the client VM: expected beside actual"
entries=$(kube entries)
status=0
measure Cluster "$count" --entries "$entries" || status=$?
step "the echo pods' logs: the entry nodes' addresses, not $CLIENT_IP"
logs
exit "$status"
