#!/bin/sh
# The client: outside the cluster, behind the router. It reaches the VIPs (and the nodes)
# through the router, with curl and with python3 for `python3 -m pyxlb.lab.scenarios`, which
# runs from the synced checkout without building anything. Environment (from the
# Vagrantfile): ROUTER_CLIENT_IP, VIP_POOL, SEGMENT_NET.
set -eu
# shellcheck source=vagrant/provision/common.sh
. /vagrant/vagrant/provision/common.sh

need curl python3

# Through the router, not the management NIC's default route. `ip route replace` is no
# change when the route is already there; provisioning runs at every `vagrant up`, so the
# routes come back after a reboot.
route "$VIP_POOL" "$ROUTER_CLIENT_IP"
route "$SEGMENT_NET" "$ROUTER_CLIENT_IP"
log "routes to $VIP_POOL and $SEGMENT_NET via $ROUTER_CLIENT_IP"
