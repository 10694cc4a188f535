# Helpers shared by the provisioning scripts (sourced; POSIX sh). Each one changes the
# machine only when it is not already as wanted, so provisioning again changes nothing.

# log MESSAGE: one line, prefixed with the machine's name, in Vagrant's output
log() {
    printf '%s: %s\n' "$(hostname)" "$*"
}

# need PACKAGE...: install the Debian packages among these that are not installed yet
need() {
    missing=""
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed"; then
            missing="$missing $pkg"
        fi
    done
    if [ -n "$missing" ]; then
        log "installing$missing"
        apt-get update -q
        # shellcheck disable=SC2086  # one word per package
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
    fi
}

# put PATH [MODE]: write standard input to PATH unless PATH already holds exactly that.
# Status 0 when the file changed (so the caller restarts what reads it), 1 when not.
put() {
    tmp=$(mktemp)
    cat >"$tmp"
    if [ -f "$1" ] && cmp -s "$tmp" "$1"; then
        rm -f "$tmp"
        return 1
    fi
    mkdir -p "$(dirname "$1")"
    chmod "${2:-0644}" "$tmp"
    mv "$tmp" "$1"
    log "wrote $1"
    return 0
}

# iface_of ADDRESS: the interface holding ADDRESS (the provider names NICs its own way)
iface_of() {
    name=$(ip -o -4 addr show to "$1" | awk '{ print $2; exit }')
    if [ -z "$name" ]; then
        log "no interface holds $1: is the private network up?" >&2
        exit 1
    fi
    printf '%s\n' "$name"
}

# route NET VIA: a route, replaced in place (the same route again is no change)
route() {
    ip route replace "$1" via "$2"
}
