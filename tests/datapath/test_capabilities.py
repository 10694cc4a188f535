"""The capabilities deploy/daemonset.yaml grants the agent, tried for real.

A child process runs what the agent does to its node's datapath (load and pin, configure,
attach, apply states that add, change and remove rings, adopt the pins again as a restarted
pod would, read the counters) with only the capabilities the DaemonSet adds: its bounding
set holds those alone (as a container's does; a root process gets its bounding set at exec)
and its RLIMIT_MEMLOCK is a container's usual 64 KiB. It runs in a network namespace the
test made, entered with nsenter so that, as in the pod, only the network namespace differs
and the host's bpffs is where the pins go.

The set must be enough, and minimal: without any one of its capabilities some step fails.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DAEMONSET = ROOT / "deploy" / "daemonset.yaml"
CONFIGMAP = ROOT / "deploy" / "configmap.yaml"

# Linux capability numbers (include/uapi/linux/capability.h), index = number.
CAP_NAMES = [
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid",
    "setuid", "setpcap", "linux_immutable", "net_bind_service", "net_broadcast",
    "net_admin", "net_raw", "ipc_lock", "ipc_owner", "sys_module", "sys_rawio",
    "sys_chroot", "sys_ptrace", "sys_pacct", "sys_admin", "sys_boot", "sys_nice",
    "sys_resource", "sys_time", "sys_tty_config", "mknod", "lease", "audit_write",
    "audit_control", "setfcap", "mac_override", "mac_admin", "syslog", "wake_alarm",
    "block_suspend", "audit_read", "perfmon", "bpf", "checkpoint_restore",
]

# What the agent does with the datapath, in order (pyxlb/k8s/run.py and agent.py), each
# step reported so a failure names the operation that needed the missing capability.
CHILD = r"""
import json, resource, sys
resource.setrlimit(resource.RLIMIT_MEMLOCK, (65536, 65536))
from pyxlb.datapath import Datapath
from pyxlb.state import Backend, DesiredState, Vip

pin_dir, iface, mode, seed, mtu = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
with open("/proc/self/status") as f:
    cap_eff = next(l.split()[1] for l in f if l.startswith("CapEff:"))
report = {"cap_eff": cap_eff, "done": []}

def step(name, fn):
    try:
        out = fn()
    except Exception as exc:
        report.update(failed=name, error=f"{type(exc).__name__}: {exc}"[:300])
        print(json.dumps(report))
        sys.exit(0)
    report["done"].append(name)
    return out

web = "192.0.2.10:80/tcp"
first = DesiredState((
    Vip(web, backends=(Backend("10.0.0.2"), Backend("10.0.0.3", weight=2))),
    Vip("[2001:db8::10]:443/tcp", backends=(Backend("2001:db8::2"),)),
))
changed = DesiredState((Vip(web, backends=(Backend("10.0.0.2"), Backend("10.0.0.4"))),))

dp = step("load and pin", lambda: Datapath.create(pin_dir))
step("configure", lambda: dp.configure(seed=seed, mtu=mtu, src4="10.0.0.1/32"))
step("attach", lambda: dp.attach(iface, mode))
step("add local address", lambda: dp.add_local_addr("10.0.0.1"))
step("apply new rings", lambda: dp.apply(first))
step("apply changed and removed rings", lambda: dp.apply(changed))
step("close", dp.close)
dp = step("adopt the pins", lambda: Datapath.create(pin_dir))
step("attach again", lambda: dp.attach(iface, mode))
step("read back", lambda: dp.layout(refresh=True))
step("apply nothing", lambda: dp.apply(DesiredState()))
step("read counters", dp.stats)
dp.close()
print(json.dumps(report))
"""
ALL_STEPS = 12


def daemonset_caps() -> frozenset:
    """The capabilities the agent container adds, as capsh names them (net_admin)."""
    for doc in yaml.safe_load_all(DAEMONSET.read_text()):
        if doc and doc.get("kind") == "DaemonSet":
            (container,) = doc["spec"]["template"]["spec"]["containers"]
            caps = container["securityContext"]["capabilities"]
            assert caps["drop"] == ["ALL"], caps
            return frozenset(c.lower() for c in caps["add"])
    raise AssertionError(f"no DaemonSet in {DAEMONSET}")


def agent_settings() -> dict:
    (cm,) = [d for d in yaml.safe_load_all(CONFIGMAP.read_text()) if d]
    return cm["data"]


CAPS = daemonset_caps()
# what announcing needs beside the datapath: an AF_PACKET socket for gratuitous ARP / NA
# (L2), and BGP's port 179 for the node's BIRD
ANNOUNCE_CAPS = frozenset({"net_raw", "net_bind_service"})
DATAPATH_CAPS = CAPS - ANNOUNCE_CAPS


def run_with(caps, ns: str, pin_dir: str) -> dict:
    """Run CHILD in namespace `ns` holding only `caps`; its report."""
    for tool, package in (("capsh", "libcap2-bin"), ("nsenter", "util-linux")):
        assert shutil.which(tool), f"{tool} is missing: install {package} (scripts/setup-system.sh)"
    unknown = set(caps) - set(CAP_NAMES)
    assert not unknown, f"not capability names: {sorted(unknown)}"
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    drop = ",".join(f"cap_{name}" for name in CAP_NAMES[:last + 1] if name not in caps)
    settings = agent_settings()
    ip = ["ip", "-n", ns]
    subprocess.run([*ip, "addr", "add", "10.0.0.1/24", "dev", "veth0"], check=True)
    cmd = ["nsenter", f"--net=/run/netns/{ns}", "capsh", f"--drop={drop}",
           f"--shell={sys.executable}", "--", "-c", CHILD, pin_dir, "veth0",
           settings["PYXLB_XDP_MODE"], settings["PYXLB_SEED"], settings["PYXLB_MTU"]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip(), (proc.returncode, proc.stderr[-2000:])
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    wanted = sum(1 << CAP_NAMES.index(c) for c in caps)
    assert int(report["cap_eff"], 16) == wanted, \
        f"the child held {report['cap_eff']}, not {wanted:016x} ({sorted(caps)})"
    return report


def test_the_daemonset_capabilities_run_the_datapath(netns, bpffs_dir):
    report = run_with(CAPS, netns, f"{bpffs_dir}/pyxlb")
    assert "failed" not in report, \
        f"with {sorted(CAPS)} the agent cannot '{report.get('failed')}': {report.get('error')}"
    assert len(report["done"]) == ALL_STEPS, report


@pytest.mark.parametrize("missing", sorted(DATAPATH_CAPS))
def test_each_capability_is_needed(netns, bpffs_dir, missing):
    report = run_with(CAPS - {missing}, netns, f"{bpffs_dir}/pyxlb")
    assert "failed" in report, (f"the datapath runs without CAP_{missing.upper()}: remove it "
                                f"from {DAEMONSET.relative_to(ROOT)}")
    assert "Operation not permitted" in report["error"] or "Permission denied" in report["error"]


BPF_ONLY = frozenset({"bpf", "perfmon", "net_admin"})


def test_sys_admin_is_needed_only_for_opening_by_id(netns, bpffs_dir):
    """CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN load and attach the balancer; CAP_SYS_ADMIN is
    there because the kernel lets only it open a map or program by id, which the datapath
    does to replace and remove rings. When that changes, this set is the one to grant."""
    report = run_with(BPF_ONLY, netns, f"{bpffs_dir}/pyxlb")
    if "failed" not in report:
        assert DATAPATH_CAPS == BPF_ONLY, (f"BPF, PERFMON and NET_ADMIN now run the whole datapath: "
                                  f"grant those instead of {sorted(CAPS)} in "
                                  f"{DAEMONSET.relative_to(ROOT)}")
        return
    assert "sys_admin" in CAPS
    assert report["done"][:5] == ["load and pin", "configure", "attach", "add local address",
                                  "apply new rings"], report
    assert report["failed"] == "apply changed and removed rings", report
    assert "open map id" in report["error"] and "Operation not permitted" in report["error"]


ANNOUNCE_CHILD = r"""
import json, socket, sys
what = sys.argv[1]
try:
    if what == "raw":
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        s.bind(("veth0", 0))
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 179))
    s.close()
    print(json.dumps({"ok": True}))
except OSError as exc:
    print(json.dumps({"ok": False, "error": exc.strerror}))
"""


@pytest.mark.parametrize("what, cap", [("raw", "net_raw"), ("bgp", "net_bind_service")])
def test_announcing_needs_raw_sockets_and_the_bgp_port(netns, what, cap):
    assert cap in CAPS, f"{DAEMONSET.relative_to(ROOT)} lacks {cap.upper()}"
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)

    def run(caps):
        drop = ",".join(f"cap_{n}" for n in CAP_NAMES[:last + 1] if n not in caps)
        proc = subprocess.run(["nsenter", f"--net=/run/netns/{netns}", "capsh",
                               f"--drop={drop}", f"--shell={sys.executable}", "--", "-c",
                               ANNOUNCE_CHILD, what], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    assert run(CAPS)["ok"], f"the DaemonSet's capabilities cannot {what}"
    refused = run(CAPS - {cap})
    assert not refused["ok"] and refused["error"] in ("Operation not permitted",
                                                    "Permission denied"), refused
