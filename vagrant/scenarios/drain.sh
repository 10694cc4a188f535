#!/bin/sh
# Scenario 3, drain node1 under Local. Its two pods are rescheduled on node3 (the lab pins
# pods by nodeSelector, so the scenario moves that Deployment's selector to node3), and node1
# is drained. Expected: node1's two thirds go to node3; node2 keeps its third; node1 gets
# nothing and stops announcing the VIP (the router drops it as a next hop).
# Usage: scenarios/drain.sh [CONNECTIONS]; scenarios/drain.sh undo puts node1 back.
set -eu
# shellcheck source=vagrant/scenarios/lib/common.sh
. "$(dirname "$0")/lib/common.sh"

if [ "${1:-}" = undo ]; then
    step "node1 uncordoned, echo-a pinned to node1 again"
    kube restore
    exit 0
fi
count=${1:-300}

step "Local policy, pods 2/1/0"
kube ready
kube workload Local
step "node1 cordoned, its echo pods moved to node3, node1 drained"
kube drain node1 node3
on node1 "kubectl get nodes; kubectl get pods -l app.kubernetes.io/name=echo -o wide"
step "the router's route to the VIPs: node2 and node3 only"
routes
step "$count connections from the client VM: expected beside actual"
status=0
measure Local "$count" || status=$?
printf '\n(scenarios/drain.sh undo puts node1 back)\n'
exit "$status"
