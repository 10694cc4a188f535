#!/bin/sh
# Scenario 4, the agent on node1 dies while the client keeps connecting. Expected: no
# connection fails and the shares stay 2:1:0. The XDP program and its maps are pinned on
# the node, so node1 keeps forwarding without its agent; a killed agent (SIGKILL, the
# default) leaves its BIRD announcing and the restarted one adopts both; a deleted pod
# (`delete`: SIGTERM) withdraws node1's routes, the router sends node1's flows to the other
# nodes, whose balancers pick the same backends, and the new pod announces again.
# Usage: scenarios/kill-agent.sh [kill|delete] [CONNECTIONS]
set -eu
# shellcheck source=vagrant/scenarios/lib/common.sh
. "$(dirname "$0")/lib/common.sh"
how=${1:-kill}
count=${2:-600}
case "$how" in
    kill | delete) ;;
    *)
        echo "usage: scenarios/kill-agent.sh [kill|delete] [CONNECTIONS]" >&2
        exit 2
        ;;
esac

step "Local policy, pods 2/1/0"
kube ready
kube workload Local
VIP=$(kube vip)
PODS=$(kube pods)
out=$(mktemp)
trap 'rm -f "$out"' EXIT
step "$count connections from the client, one every 20 ms; the agent on node1 dies meanwhile"
measure Local "$count" --interval 0.02 >"$out" 2>&1 &
client=$!
sleep 6     # vagrant ssh takes a few seconds to start the client
kube "$how-agent" node1
status=0
wait "$client" || status=$?
cat "$out"
step "the agents after the scenario (node1's restarted)"
kube ready
on node1 "kubectl -n pyxlb-system get pods -o wide"
exit "$status"
