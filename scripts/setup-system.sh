#!/bin/sh
# Install the Debian packages pyxlb builds and tests with; installs only what is missing.
set -eu
# libcap2-bin (capsh) and util-linux (nsenter): the DaemonSet capability test; bird2: the
# BGP speaker of `announce: bgp` (and the router of the BGP lab tests); the Vagrant lab's
# static checks run vagrant validate and shellcheck;
# python3-jsonschema: the lab router's config, generated with Debian's python3 as its VM does;
# podman, buildah, runc, mmdebstrap: `make image` and the lab's containerised agents;
# prometheus (with promtool): the test that evaluates the dashboard's queries
PACKAGES="clang llvm libbpf-dev libelf-dev zlib1g-dev pkg-config iproute2 ethtool iptables nftables python3-venv python3-dev python3-jsonschema libcap2-bin util-linux bird2 vagrant shellcheck podman buildah runc mmdebstrap prometheus"
# kubectl drives the Kubernetes lab: Debian's kubernetes-client only where none is on PATH
# (other kubectl packages conflict with it)
if ! command -v kubectl >/dev/null 2>&1; then
	PACKAGES="$PACKAGES kubernetes-client"
fi
missing=""
for p in $PACKAGES; do
	status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
	case "$status" in
	*"install ok installed"*) ;;
	*) missing="$missing $p" ;;
	esac
done
if [ -n "$missing" ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "pyxlb setup: missing Debian packages:$missing (run as root, or install them)" >&2
		exit 1
	fi
	echo "pyxlb setup: installing$missing"
	apt-get update -qq
	# shellcheck disable=SC2086 # $missing is a list of package names
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
fi
