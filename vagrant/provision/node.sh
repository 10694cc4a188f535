#!/bin/sh
# A Kubernetes node: k3s (the server on node1, agents on the others) without k3s's own
# service load balancer (servicelb) or ingress (traefik), so pyxlb alone serves LoadBalancer
# Services; bpffs at /sys/fs/bpf for the agent's pins; the pyxlb image built from the synced
# checkout's Dockerfile with buildah (a Debian package, daemonless, so nothing competes with
# k3s's containerd) and imported into k3s's containerd. The server then installs pyxlb
# (kubectl apply -k deploy/) and the lab's IPPool and BGPPeer (vagrant/manifests/pool.yaml).
# Environment (from the Vagrantfile): NODE_IP, ROLE (server|agent), SERVER_IP, ROUTER_IP,
# CLIENT_NET, K3S_CHANNEL, K3S_TOKEN.
set -eu
# shellcheck source=vagrant/provision/common.sh
. /vagrant/vagrant/provision/common.sh

need curl ca-certificates buildah

# bpffs: systemd mounts it at boot on Debian; the fstab line covers a box that does not
mountpoint -q /sys/fs/bpf || mount -t bpf bpffs /sys/fs/bpf
if ! grep -q '^bpffs /sys/fs/bpf ' /etc/fstab; then
    echo 'bpffs /sys/fs/bpf bpf defaults 0 0' >>/etc/fstab
fi

# The pods answer the client directly (direct server return): replies to the client link
# must leave by the router, not by the management NIC's default route.
route "$CLIENT_NET" "$ROUTER_IP"

IFACE=$(iface_of "$NODE_IP")

# k3s, configured by file so that a changed setting is a restart, not a reinstall
if [ "$ROLE" = server ]; then
    unit=k3s
    config=$(cat <<CONF
node-ip: $NODE_IP
flannel-iface: $IFACE
token: $K3S_TOKEN
write-kubeconfig-mode: "0644"
disable:
  - servicelb
  - traefik
CONF
)
else
    unit=k3s-agent
    config=$(cat <<CONF
server: https://$SERVER_IP:6443
node-ip: $NODE_IP
flannel-iface: $IFACE
token: $K3S_TOKEN
CONF
)
fi
changed=no
if printf '%s\n' "$config" | put /etc/rancher/k3s/config.yaml 0600; then
    changed=yes
fi
if ! command -v k3s >/dev/null; then
    log "installing k3s ($K3S_CHANNEL channel) as $ROLE"
    if [ "$ROLE" = server ]; then
        curl -sfL https://get.k3s.io | INSTALL_K3S_CHANNEL="$K3S_CHANNEL" sh -s - server
    else
        curl -sfL https://get.k3s.io | INSTALL_K3S_CHANNEL="$K3S_CHANNEL" \
            K3S_URL="https://$SERVER_IP:6443" K3S_TOKEN="$K3S_TOKEN" sh -s - agent
    fi
elif [ "$changed" = yes ]; then
    systemctl restart "$unit"
elif ! systemctl is-active -q "$unit"; then
    systemctl start "$unit"
fi

# containerd answers once k3s is up
tries=0
until k3s ctr version >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -gt 120 ]; then
        log "k3s's containerd did not come up: journalctl -u $unit" >&2
        exit 1
    fi
    sleep 2
done

# The image the DaemonSet names (deploy/daemonset.yaml with kustomization.yaml's tag),
# rebuilt only when the sources it is built from changed.
tag=$(sed -n 's/^ *newTag: *//p' /vagrant/deploy/kustomization.yaml)
image="docker.io/library/pyxlb:$tag"
sum=$(cd /vagrant && find Dockerfile .dockerignore pyproject.toml setup.py README.md pyxlb ext xdp \
    -type f ! -name '*.pyc' ! -name '*.so' ! -name '*.o' | LC_ALL=C sort | xargs sha256sum |
    sha256sum | cut -d' ' -f1)
stamp=/var/lib/pyxlb-lab/image.sum
built=$(cat "$stamp" 2>/dev/null || true)
if [ "$built" != "$sum" ] || ! k3s ctr -n k8s.io images ls -q | grep -qx "$image"; then
    log "building $image from /vagrant/Dockerfile (a few minutes)"
    mkdir -p /var/lib/pyxlb-lab
    # short names (FROM debian:bookworm) resolve on Docker Hub, without a prompt
    put /etc/containers/registries.conf.d/50-pyxlb-lab.conf <<'CONF' || true
unqualified-search-registries = ["docker.io"]
CONF
    buildah build --layers --isolation chroot -t "$image" -f /vagrant/Dockerfile /vagrant
    rm -f /var/lib/pyxlb-lab/pyxlb.tar
    buildah push -q "$image" "docker-archive:/var/lib/pyxlb-lab/pyxlb.tar:$image"
    k3s ctr -n k8s.io images import /var/lib/pyxlb-lab/pyxlb.tar
    rm -f /var/lib/pyxlb-lab/pyxlb.tar
    echo "$sum" >"$stamp"
fi

if [ "$ROLE" != server ]; then
    log "k3s agent up; the image $image is in containerd"
    exit 0
fi

export KUBECONFIG=/etc/rancher/k3s/k3s.yaml
tries=0
until kubectl get --raw /readyz >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -gt 120 ]; then
        log "the API server did not become ready: journalctl -u k3s" >&2
        exit 1
    fi
    sleep 2
done

# pyxlb, as docs/deploy.md installs it; then the lab's settings: the uplink is the private
# NIC (the default route is the management one), and generic XDP, which every provider's
# NIC model supports. `kubectl apply` of what is already there changes nothing.
kubectl apply -k /vagrant/deploy
kubectl wait --for condition=established --timeout=60s \
    crd/ippools.pyxlb.io crd/bgppeers.pyxlb.io
patched=$(kubectl -n pyxlb-system patch configmap pyxlb-config --type merge \
    -p "{\"data\":{\"PYXLB_INTERFACE\":\"$IFACE\",\"PYXLB_XDP_MODE\":\"generic\"}}")
case "$patched" in
    *"no change"*) ;;
    *) kubectl -n pyxlb-system rollout restart daemonset/pyxlb-agent ;;
esac
kubectl apply -f /vagrant/vagrant/manifests/pool.yaml
log "pyxlb installed; the agents start as each node's image is imported"
