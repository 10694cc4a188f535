#!/usr/bin/env bash
# Write a podman containers.conf that works on this host and print its path: runc where it is
# installed (crun fails on hosts with a hybrid cgroup v1/v2 layout), and container rlimits
# equal to this shell's hard limits (podman's defaults are higher, and setting them fails
# without CAP_SYS_RESOURCE), processes also no more than kernel.pid_max (runc fails to set
# a higher one). Used by scripts/build-image.sh and the lab's containerised agents
# (pyxlb/lab/container.py writes the same file).
set -eu
dir=${PYXLB_CONTAINERS_DIR:-/run/pyxlb-containers}
mkdir -p "$dir"
nofile=$(ulimit -Hn)
nproc=$(ulimit -Hu)
[ "$nofile" = unlimited ] && nofile=1048576
pid_max=$(cat /proc/sys/kernel/pid_max)
if [ "$nproc" = unlimited ] || [ "$nproc" -gt "$pid_max" ]; then nproc=$pid_max; fi
{
	echo "[containers]"
	echo "default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]"
	if command -v runc >/dev/null 2>&1; then
		echo "[engine]"
		echo "runtime = \"runc\""
	fi
} >"$dir/containers.conf"
echo "$dir/containers.conf"
