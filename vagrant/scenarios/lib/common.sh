# Sourced by the scenario scripts, which run on the host: run commands in the VMs with
# `vagrant ssh -c` from the Vagrantfile's directory. POSIX sh.

cd "$(dirname "$0")/.." || exit 1

CLIENT_IP=10.77.1.2

# step TEXT: a heading in the scenario's output
step() {
    printf '\n=== %s\n' "$*"
}

# on MACHINE COMMAND: run COMMAND (one string) in a VM
on() {
    machine=$1
    shift
    vagrant ssh "$machine" -c "$*"
}

# kube ACTION [ARG...]: one of lib/kube.sh's actions, on node1 (the k3s server)
kube() {
    on node1 "sh /vagrant/vagrant/scenarios/lib/kube.sh $*"
}

# measure POLICY COUNT [OPTION...]: connect COUNT times from the client VM to the echo
# Service's external IP and print expected beside actual (python3 -m pyxlb.lab.scenarios).
# VIP and PODS, when set, save asking node1 (a few seconds each).
measure() {
    policy=$1
    count=$2
    shift 2
    vip=${VIP:-$(kube vip)}
    pods=${PODS:-$(kube pods)}
    on client "cd /vagrant && python3 -m pyxlb.lab.scenarios measure --vip $vip --pods $pods \
        --policy $policy --client $CLIENT_IP --count $count $*"
}

# routes: the router's view of the VIPs (one multipath route, a next hop per node)
routes() {
    on router "ip route show 10.77.100.0/24; sudo birdc -r show protocols | grep -i bgp"
}

# logs: what the echo pods logged (each line names the client address the pod saw)
logs() {
    kube logs
}
