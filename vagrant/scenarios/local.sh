#!/bin/sh
# Scenario 1, externalTrafficPolicy Local: three echo pods, two on node1, one on node2, none
# on node3. Expected: the Service gets an external IP from 10.77.100.0/28; connections from
# the client land on node1 and node2 in the ratio 2:1 (by pods, not by nodes) and never on
# node3; every pod sees the client VM's own address (10.77.1.2), and logs it.
# Usage (from vagrant/, after `vagrant up`): scenarios/local.sh [CONNECTIONS]
set -eu
# shellcheck source=vagrant/scenarios/lib/common.sh
. "$(dirname "$0")/lib/common.sh"
count=${1:-300}

step "the pyxlb agents are ready on every node"
kube ready
step "echo pods 2/1/0 over node1/node2/node3, Service echo with externalTrafficPolicy Local"
kube workload Local
on node1 "kubectl get service echo; kubectl get pods -l app.kubernetes.io/name=echo -o wide"
step "the router's route to the VIPs: a next hop per node with pods (node1, node2)"
routes
step "$count connections from the client VM: expected beside actual"
status=0
measure Local "$count" || status=$?
step "the echo pods' logs: each request from $CLIENT_IP, the client's own address"
logs
exit "$status"
