#!/bin/sh
# The lab's router: forwards between the client link (10.77.1.0/24) and the nodes' segment
# (10.77.2.0/24), and runs BIRD 2 peering with every node. The nodes announce the VIPs they
# can serve; BIRD installs each VIP once with every announcing node as a next hop (merge
# paths), and the kernel picks the next hop by the flow's layer 4 hash. The BIRD config is
# the one pyxlb.announce.bgp.upstream_router_config writes (docs/announce.md), generated
# from the synced checkout. Environment (from the Vagrantfile): ROUTER_IP, ROUTER_ASN,
# NODE_ASN, NODE_IPS.
set -eu
# shellcheck source=vagrant/provision/common.sh
. /vagrant/vagrant/provision/common.sh

# python3-jsonschema: the router config's settings are checked with pyxlb's BGP schema
need bird2 python3 python3-jsonschema tcpdump

# Forwarding, and ECMP by the 5-tuple: with the default policy 0 every flow from the client
# to a VIP would take the same node.
if put /etc/sysctl.d/90-pyxlb-lab.conf <<'CONF'
net.ipv4.ip_forward = 1
net.ipv6.conf.all.forwarding = 1
net.ipv4.fib_multipath_hash_policy = 1
net.ipv6.fib_multipath_hash_policy = 1
CONF
then
    sysctl -q -p /etc/sysctl.d/90-pyxlb-lab.conf
fi

nodes=""
for ip in $NODE_IPS; do
    nodes="$nodes --node $ip=$NODE_ASN"
done
# shellcheck disable=SC2086  # one word per option
conf=$(cd /vagrant && python3 -m pyxlb.lab.scenarios router-config --router-id "$ROUTER_IP" \
    --asn "$ROUTER_ASN" $nodes)
if printf '%s\n' "$conf" | put /etc/bird/bird.conf 0640; then
    chown bird:bird /etc/bird/bird.conf
    systemctl enable -q bird
    systemctl restart bird
fi
if ! systemctl is-active -q bird; then
    systemctl enable -q --now bird
fi
log "BIRD peers with $NODE_IPS (AS $NODE_ASN); 'birdc show protocols' shows the sessions"
