#!/bin/sh
# Cluster-side helpers of the scenarios, run on node1 (the k3s server) by lib/common.sh:
#   sh kube.sh ACTION [ARG...]
# Each action prints what the scenario needs on standard output (one line) or waits.
set -eu
export KUBECONFIG=/etc/rancher/k3s/k3s.yaml
ECHO=app.kubernetes.io/name=echo
AGENT=app.kubernetes.io/component=agent

fail() {
    printf 'kube.sh: %s\n' "$*" >&2
    exit 1
}

# the agents: every node's pod ready. An agent pod that tried to start before its node
# had imported the image waits out the image-pull backoff; recreating it skips the wait.
ready() {
    kubectl -n pyxlb-system get pods -l "$AGENT" --no-headers |
        awk '$3 ~ /ErrImage|ImagePullBackOff|ErrImageNeverPull/ { print $1 }' |
        while read -r pod; do
            kubectl -n pyxlb-system delete pod "$pod" --wait=false
        done
    kubectl -n pyxlb-system rollout status daemonset/pyxlb-agent --timeout=300s
}

# workload POLICY: the echo Service and Deployments, with externalTrafficPolicy POLICY
workload() {
    case "$1" in
        Local | Cluster) ;;
        *) fail "policy $1: expected Local or Cluster" ;;
    esac
    kubectl apply -f /vagrant/vagrant/manifests/echo.yaml >/dev/null
    kubectl patch service echo --type merge \
        -p "{\"spec\":{\"externalTrafficPolicy\":\"$1\"}}" >/dev/null
    kubectl rollout status deployment/echo-a --timeout=180s >/dev/null
    kubectl rollout status deployment/echo-b --timeout=180s >/dev/null
    # the agents need a moment to see the change and the router to learn the routes
    sleep 5
}

# vip: the Service's external IP, once the elected agent has written it
vip() {
    tries=0
    while :; do
        ip=$(kubectl get service echo -o jsonpath='{.status.loadBalancer.ingress[0].ip}')
        if [ -n "$ip" ]; then
            printf '%s\n' "$ip"
            return
        fi
        tries=$((tries + 1))
        [ "$tries" -lt 60 ] || fail "service echo has no external IP after 60 s: is an agent the controller? (kubectl describe service echo)"
        sleep 1
    done
}

# pods: ready echo pods per node, every node listed: node1=2,node2=1,node3=0
pods() {
    placed=$(kubectl get pods -l "$ECHO" -o jsonpath='{range .items[*]}{.spec.nodeName}{" "}{.status.conditions[?(@.type=="Ready")].status}{" "}{.metadata.deletionTimestamp}{"\n"}{end}')
    kubectl get nodes -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}' | sort |
        while read -r node; do
            n=$(printf '%s\n' "$placed" | awk -v node="$node" \
                '$1 == node && $2 == "True" && $3 == "" { n++ } END { print n + 0 }')
            printf '%s=%s,' "$node" "$n"
        done | sed 's/,$/\n/'
}

# entries: under Cluster, each eligible node (Ready, schedulable) with the networks its
# SNAT address comes from (its pod CIDR, its own address): node1=10.42.0.0/24+10.77.2.31,...
entries() {
    kubectl get nodes -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.spec.podCIDR}{" "}{.status.addresses[?(@.type=="InternalIP")].address}{" "}{.status.conditions[?(@.type=="Ready")].status}{" "}{.spec.unschedulable}{"\n"}{end}' |
        awk '$4 == "True" && $5 != "true" { printf "%s%s=%s+%s", sep, $1, $2, $3; sep = "," }
             END { print "" }'
}

# drain NODE TARGET: NODE's echo pods move to TARGET, then NODE is drained
drain() {
    kubectl cordon "$1"
    kubectl patch deployment echo-a --type merge -p "{\"spec\":{\"template\":{\"spec\":{\"nodeSelector\":{\"kubernetes.io/hostname\":\"$2\"}}}}}"
    kubectl rollout status deployment/echo-a --timeout=180s
    kubectl drain "$1" --ignore-daemonsets --delete-emptydir-data --timeout=120s
    sleep 5
}

# restore: what drain changed, undone
restore() {
    kubectl uncordon node1
    kubectl apply -f /vagrant/vagrant/manifests/echo.yaml
    kubectl rollout status deployment/echo-a --timeout=180s
}

# kill-agent NODE: SIGKILL the agent process on NODE (a crash); the kubelet restarts it
kill_agent() {
    [ "$1" = node1 ] || fail "kill-agent runs on node1 only (where this script runs)"
    pid=$(pgrep -o -f '/opt/pyxlb/bin/pyxlb agent') || fail "no pyxlb agent process on node1"
    sudo kill -KILL "$pid"
    printf 'killed the agent (pid %s) on node1\n' "$pid"
}

# delete-agent NODE: delete NODE's agent pod (SIGTERM: it withdraws its routes); the
# DaemonSet makes a new one
delete_agent() {
    kubectl -n pyxlb-system delete pod -l "$AGENT" --field-selector "spec.nodeName=$1" --wait=false
}

# logs: the last requests each echo pod logged
logs() {
    kubectl logs -l "$ECHO" --prefix --tail=3
}

action=${1:-}
[ $# -gt 0 ] && shift
case "$action" in
    ready) ready ;;
    workload) workload "$@" ;;
    vip) vip ;;
    pods) pods ;;
    entries) entries ;;
    drain) drain "$@" ;;
    restore) restore ;;
    kill-agent) kill_agent "$@" ;;
    delete-agent) delete_agent "$@" ;;
    logs) logs ;;
    *) fail "unknown action '$action': ready, workload POLICY, vip, pods, entries, drain NODE TARGET, restore, kill-agent NODE, delete-agent NODE, logs" ;;
esac
