#!/bin/sh
# Build the agent image from ./Dockerfile as pyxlb:<version> and pyxlb:dev (`make image`).
#
# Environment (all optional):
#   ENGINE=podman|docker   the container engine (default: podman, else docker)
#   BASE=auto|pull|local   where the Dockerfile's base images come from when the engine does
#                          not hold them yet: `pull` from the registry; `local` made here with
#                          mmdebstrap from Debian's archive (no registry contacted); `auto`
#                          (default) tries to pull and makes them locally if that fails
#   DEBIAN_MIRROR=URL      the archive mmdebstrap uses (default http://deb.debian.org)
#   CA_BUNDLE=FILE         a CA bundle pip inside the build trusts (a TLS-intercepting proxy);
#                          handed over as a build secret, so no layer keeps it. Default: the
#                          host's PIP_CERT, else its system bundle when one exists
#   IMAGE=NAME             the image name (default pyxlb)
set -eu
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-pyxlb}
BASE=${BASE:-auto}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org}
VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -n 1)
[ -n "$VERSION" ] || { echo "build-image: no version in pyproject.toml" >&2; exit 1; }

if [ -z "${ENGINE:-}" ]; then
	if command -v podman >/dev/null 2>&1; then ENGINE=podman
	elif command -v docker >/dev/null 2>&1; then ENGINE=docker
	else echo "build-image: neither podman nor docker found (make system installs podman)" >&2; exit 1
	fi
fi
case "$BASE" in auto | pull | local) ;; *) echo "build-image: BASE must be auto, pull or local, not '$BASE'" >&2; exit 1 ;; esac

# podman: runc where it is installed (crun cannot run on hosts with a hybrid cgroup layout),
# and container rlimits no higher than this host's hard limits (podman's defaults fail where
# the build user cannot raise them). Kept only for this build unless CONTAINERS_CONF is set.
if [ "$ENGINE" = podman ] && [ -z "${CONTAINERS_CONF:-}" ]; then
	CONTAINERS_CONF=$(scripts/containers-conf.sh)
	export CONTAINERS_CONF
fi

# A FROM's image name as the engine stores it: debian:bookworm -> docker.io/library/debian:bookworm
qualified() {
	case "$1" in
	*/*/*) echo "$1" ;;
	*/*) echo "docker.io/$1" ;;
	*) echo "docker.io/library/$1" ;;
	esac
}

# Debian's suite of a debian:<suite>[-slim] name
make_local_base() {
	name=$1
	tag=${name##*:}
	suite=${tag%-slim}
	case "$name" in
	*debian:*) ;;
	*) echo "build-image: cannot make $name locally (only debian:<release>[-slim] images)" >&2; exit 1 ;;
	esac
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	echo "build-image: making $name with mmdebstrap from $DEBIAN_MIRROR ($suite, minbase)"
	# -slim drops documentation, man pages and translations, as Debian's own slim images do
	slim=""
	case "$tag" in
	*-slim) slim="--dpkgopt=path-exclude=/usr/share/man/* --dpkgopt=path-exclude=/usr/share/doc/*
		--dpkgopt=path-include=/usr/share/doc/*/copyright --dpkgopt=path-exclude=/usr/share/locale/*
		--dpkgopt=path-exclude=/usr/share/info/*" ;;
	esac
	# shellcheck disable=SC2086 # $slim is a list of options
	# merged /usr made by the hook rather than the usrmerge package (which pulls in perl):
	# how Debian's own images are made
	mmdebstrap --quiet --variant=minbase --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
		$slim "$suite" "$tmp/rootfs.tar" \
		"deb $DEBIAN_MIRROR/debian $suite main" \
		"deb $DEBIAN_MIRROR/debian $suite-updates main" \
		"deb $DEBIAN_MIRROR/debian-security $suite-security main"
	quiet=""
	[ "$ENGINE" = podman ] && quiet="--quiet"     # (docker import prints only the id)
	# shellcheck disable=SC2086 # $quiet is empty or one option
	"$ENGINE" import $quiet --change 'CMD ["bash"]' "$tmp/rootfs.tar" "$(qualified "$name")" >/dev/null
	rm -rf "$tmp"
	trap - EXIT
}

# shellcheck disable=SC2013 # image names hold no spaces
for name in $(awk 'toupper($1) == "FROM" { print $2 }' Dockerfile | sort -u); do
	full=$(qualified "$name")
	if "$ENGINE" image inspect "$full" >/dev/null 2>&1; then
		continue
	fi
	if [ "$BASE" != local ] && "$ENGINE" pull -q "$full" >/dev/null 2>&1; then
		echo "build-image: pulled $full"
		continue
	fi
	if [ "$BASE" = pull ]; then
		echo "build-image: cannot pull $full (BASE=local makes it with mmdebstrap)" >&2
		exit 1
	fi
	command -v mmdebstrap >/dev/null 2>&1 \
		|| { echo "build-image: cannot pull $full and mmdebstrap is missing (make system installs it)" >&2; exit 1; }
	make_local_base "$name"
done

if [ -z "${CA_BUNDLE:-}" ]; then
	for f in "${PIP_CERT:-}" /etc/ssl/certs/ca-certificates.crt; do
		if [ -n "$f" ] && [ -f "$f" ]; then CA_BUNDLE=$f; break; fi
	done
fi
secret=""
if [ -n "${CA_BUNDLE:-}" ]; then
	[ -f "$CA_BUNDLE" ] || { echo "build-image: CA_BUNDLE $CA_BUNDLE is not a file" >&2; exit 1; }
	secret="--secret=id=ca,src=$CA_BUNDLE"
fi

start=$(date +%s)
pull="--pull=never"
[ "$ENGINE" = docker ] && pull=""
# shellcheck disable=SC2086 # $pull and $secret are empty or one option each
"$ENGINE" build $pull --network host $secret \
	-t "$IMAGE:$VERSION" -t "$IMAGE:dev" -f Dockerfile .
size=$("$ENGINE" image inspect --format '{{.Size}}' "$IMAGE:$VERSION")
echo "build-image: $IMAGE:$VERSION and $IMAGE:dev built in $(($(date +%s) - start)) s, $((size / 1000000)) MB"
