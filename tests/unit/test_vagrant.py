"""The Vagrant lab (vagrant/), checked without VMs, and the scenario logic it shares with the
namespace lab (pyxlb/lab/scenarios.py).

VMs cannot run here, so this is what can be proven statically: `vagrant validate` accepts
the Vagrantfile (and it is really evaluated: a bad setting is refused), shellcheck passes on
every script as POSIX sh, the manifests the lab applies pass strict Kubernetes schema
validation and the CRDs' schemas, the addresses agree with the namespace lab's plan and
with each other, the router's BIRD config is pyxlb's own, and the provisioning scripts are
idempotent in structure (every install, write and restart behind a guard; the `put`
helper itself is run). The scenario table is tested for real, including against a local
echo server. Missing tools (vagrant, shellcheck) fail: scripts/setup-system.sh installs them.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import threading
from collections import Counter
from pathlib import Path
from typing import Dict, List

import jsonschema
import kubernetes_validate
import pytest
import yaml

from pyxlb.announce.bgp import upstream_router_config
from pyxlb.lab import CLIENT, CLIENT_NET, HOST, ROUTER, SEGMENT_NET, VIP4, node_addr, scenarios
from pyxlb.lab.scenarios import Answer, ScenarioError

ROOT = Path(__file__).resolve().parents[2]
VAGRANT = ROOT / "vagrant"
VAGRANTFILE = VAGRANT / "Vagrantfile"
PROVISION = VAGRANT / "provision"
MANIFESTS = VAGRANT / "manifests"
CRDS = ROOT / "deploy" / "crds"
K8S_VERSIONS = ("1.30", "1.34")      # as tests/unit/test_deploy.py
SCRIPTS = sorted(VAGRANT.rglob("*.sh"))
SOURCED = {PROVISION / "common.sh", VAGRANT / "scenarios" / "lib" / "common.sh"}


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: run scripts/setup-system.sh (Debian package {name})"
    return path


def _constants() -> Dict[str, str]:
    """The Vagrantfile's top-level string and number constants (NAME = "value")."""
    text = VAGRANTFILE.read_text()
    out = {m[1]: m[2] for m in re.finditer(r'^([A-Z_]+) = "([^"]*)"', text, re.M)}
    out.update({m[1]: m[2] for m in re.finditer(r"^([A-Z_]+) = (\d+)$", text, re.M)})
    return out


def _nodes() -> Dict[str, str]:
    line = re.search(r"^NODES = \{(.*)\}$", VAGRANTFILE.read_text(), re.M)[1]
    return dict(re.findall(r'"(node\d)" => "([0-9.]+)"', line))


def _docs(path: Path) -> List[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _crd_schema(plural: str) -> dict:
    (crd,) = _docs(CRDS / f"{plural}.yaml")
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


# -- vagrant validate ------------------------------------------------------------------------

def _validate(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    # Vagrant's state and box store in tmp_path: nothing lands in the tree or in ~/.vagrant.d,
    # and the empty box store afterwards shows no box was fetched. --ignore-provider: no
    # provider (libvirt, VirtualBox) is installed here, and validate refuses to run without
    # one otherwise; the providers' blocks are then skipped, the rest is evaluated.
    full = {**os.environ, "VAGRANT_HOME": str(tmp_path / "home"),
            "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot"), "VAGRANT_CHECKPOINT_DISABLE": "1",
            **env}
    return subprocess.run([_tool("vagrant"), "validate", "--ignore-provider"], cwd=VAGRANT,
                          env=full, capture_output=True, text=True, timeout=120)


def test_vagrant_validate_accepts_the_vagrantfile(tmp_path):
    done = _validate(tmp_path)
    assert done.returncode == 0 and "validated successfully" in done.stdout, \
        done.stdout + done.stderr
    for machine in ("router", "node1", "node2", "node3", "client"):
        assert f"==> {machine}:" in done.stdout, f"no machine {machine} in {done.stdout}"
    boxes = tmp_path / "home" / "boxes"
    assert not boxes.exists() or not any(boxes.iterdir()), "validate fetched a box"


def test_vagrant_validate_evaluates_the_settings(tmp_path):
    """A bad size is refused with its name: the file is run, not merely parsed."""
    done = _validate(tmp_path, PYXLB_NODE_MEMORY="lots")
    assert done.returncode != 0
    assert 'PYXLB_NODE_MEMORY="lots" is not a positive whole number' in done.stdout + done.stderr


def test_vagrantfile_settings_and_providers():
    text = VAGRANTFILE.read_text()
    for var in ("PYXLB_BOX", "PYXLB_NODE_MEMORY", "PYXLB_NODE_CPUS", "PYXLB_ROUTER_MEMORY",
                "PYXLB_ROUTER_CPUS", "PYXLB_CLIENT_MEMORY", "PYXLB_CLIENT_CPUS"):
        assert f'"{var}"' in text, var
    assert 'ENV.fetch("PYXLB_BOX", "debian/bookworm64")' in text
    assert "config.vm.provider :libvirt" in text or "provider :libvirt" in text
    assert "provider :virtualbox" in text
    assert 'synced_folder "..", "/vagrant", type: "rsync"' in text
    # every provisioner runs again at each `vagrant up`: they must be idempotent (below)
    provisioners = re.findall(r'provision "shell", path: "([^"]+)"(.*)', text)
    assert {p for p, _ in provisioners} == {"provision/router.sh", "provision/node.sh",
                                            "provision/client.sh"}
    assert all('run: "always"' in rest for _, rest in provisioners)


# -- the address plan: the namespace lab's ---------------------------------------------------

def test_address_plan_is_the_namespace_labs():
    c = _constants()
    assert c["ROUTER_IP"] == str(node_addr(ROUTER, 4))
    assert c["ROUTER_CLIENT_IP"] == str(node_addr(ROUTER, 4, CLIENT_NET))
    assert c["CLIENT_IP"] == str(node_addr(CLIENT, 4))
    nodes = _nodes()
    assert list(nodes) == ["node1", "node2", "node3"]
    # node1..3 are the Kubernetes namespace lab's n1..n3, at the same host numbers
    for i, (name, ip) in enumerate(nodes.items(), 1):
        assert ipaddress.ip_address(ip) in ipaddress.ip_network(SEGMENT_NET.v4), name
        assert ip == str(node_addr(f"n{i}", 4)), (name, ip, HOST[f"n{i}"])
    assert VIP4 in ipaddress.ip_network(c["VIP_POOL"])
    # the scenarios tell pyxlb.lab.scenarios which address the pods should see
    assert f"\nCLIENT_IP={c['CLIENT_IP']}\n" in (VAGRANT / "scenarios/lib/common.sh").read_text()


def test_pool_and_peer_agree_with_the_vagrantfile_and_the_crds():
    c = _constants()
    pool, peer = _docs(MANIFESTS / "pool.yaml")
    jsonschema.validate(pool, _crd_schema("ippools"))
    jsonschema.validate(peer, _crd_schema("bgppeers"))
    assert (pool["kind"], peer["kind"]) == ("IPPool", "BGPPeer")
    assert pool["spec"]["addresses"] == [c["VIP_POOL"]]
    assert pool["spec"]["announce"] == "bgp"
    assert peer["spec"]["peerAddress"] == c["ROUTER_IP"]
    assert peer["spec"]["peerASN"] == int(c["ROUTER_ASN"])
    assert peer["spec"]["myASN"] == int(c["NODE_ASN"])
    assert "nodeSelector" not in peer["spec"], "every node peers with the router"


def test_the_crd_check_is_live():
    _, peer = _docs(MANIFESTS / "pool.yaml")
    peer["spec"]["peerASN"] = "64512"
    with pytest.raises(jsonschema.ValidationError, match="is not of type 'integer'"):
        jsonschema.validate(peer, _crd_schema("bgppeers"))


# -- the manifests ---------------------------------------------------------------------------

def _kube_docs():
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for doc in _docs(path):
            if doc["apiVersion"].startswith("pyxlb.io/"):
                continue            # our CRDs: checked against their schemas above
            yield path, doc


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_pass_strict_kubernetes_validation(version):
    seen = 0
    for path, doc in _kube_docs():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.relative_to(ROOT)}: {doc['kind']} {doc['metadata']['name']}: "
                        f"{exc.message} at {'.'.join(map(str, exc.absolute_path))}")
        seen += 1
    assert seen == 3, "echo.yaml: a Service and two Deployments"


def test_echo_workload_is_two_one_zero_under_local():
    svc, a, b = _docs(MANIFESTS / "echo.yaml")
    (config,) = [d for d in _docs(ROOT / "deploy" / "configmap.yaml")]
    kust = yaml.safe_load((ROOT / "deploy" / "kustomization.yaml").read_text())
    assert svc["spec"]["type"] == "LoadBalancer"
    assert svc["spec"]["externalTrafficPolicy"] == "Local"
    assert svc["spec"]["loadBalancerClass"] == config["data"]["PYXLB_LB_CLASS"]
    placement = Counter()
    for deploy in (a, b):
        pod = deploy["spec"]["template"]
        assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        assert deploy["spec"]["selector"]["matchLabels"].items() <= \
            pod["metadata"]["labels"].items()
        placement[pod["spec"]["nodeSelector"]["kubernetes.io/hostname"]] += \
            deploy["spec"]["replicas"]
        (container,) = pod["spec"]["containers"]
        # the image the nodes imported (no registry): the DaemonSet's, with kustomize's tag
        assert container["image"] == f"pyxlb:{kust['images'][0]['newTag']}"
        assert container["imagePullPolicy"] == "Never"
        assert container["command"] == ["python3", "-m", "pyxlb.lab.scenarios"]
        assert container["args"][:3] == ["serve", "--name", "$(POD_NAME)@$(NODE_NAME)"]
        assert container["ports"][0]["containerPort"] == int(container["args"][4])
    assert placement == {"node1": 2, "node2": 1}
    assert set(placement) < set(_nodes())


def test_the_kubernetes_check_is_live():
    svc = _docs(MANIFESTS / "echo.yaml")[0]
    svc["spec"]["externalTrafficPolicyy"] = "Local"
    with pytest.raises(kubernetes_validate.ValidationError, match="externalTrafficPolicyy"):
        kubernetes_validate.validate(svc, K8S_VERSIONS[-1], strict=True)


# -- the scripts -----------------------------------------------------------------------------

def test_shellcheck_passes_on_every_script():
    assert len(SCRIPTS) >= 9, SCRIPTS
    done = subprocess.run([_tool("shellcheck"), "-x", "-s", "sh", "-S", "style",
                           *(str(p.relative_to(ROOT)) for p in SCRIPTS)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and not done.stdout, done.stdout + done.stderr


def test_shellcheck_finds_faults(tmp_path):
    """The same invocation reports an unquoted variable: a pass above means something."""
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/bin/sh\nset -eu\nx=$1\nrm $x\n")
    done = subprocess.run([_tool("shellcheck"), "-x", "-s", "sh", "-S", "style", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "SC2086" in done.stdout


@pytest.mark.parametrize("path", [p for p in SCRIPTS if p not in SOURCED],
                         ids=lambda p: str(p.relative_to(VAGRANT)))
def test_scripts_are_posix_sh_with_set_eu(path):
    lines = path.read_text().splitlines()
    assert lines[0] == "#!/bin/sh", path
    assert "set -eu" in lines[:20], path
    assert os.access(path, os.X_OK), f"{path} is not executable"


def test_sourced_helpers_have_no_shebang_and_are_sourced():
    for path in SOURCED:
        assert not path.read_text().startswith("#!"), path
    for path in PROVISION.glob("*.sh"):
        if path.name != "common.sh":
            assert ". /vagrant/vagrant/provision/common.sh" in path.read_text(), path


# -- idempotent provisioning -----------------------------------------------------------------

def _sh(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", f". {PROVISION / 'common.sh'}; {script}", "sh", *args],
                          capture_output=True, text=True, timeout=30)


def test_put_writes_only_a_change(tmp_path):
    target = tmp_path / "etc" / "x.conf"
    first = _sh('printf "a\\n" | put "$1" 0600', str(target))
    assert first.returncode == 0 and target.read_text() == "a\n", first.stderr
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    before = target.stat().st_mtime_ns
    again = _sh('printf "a\\n" | put "$1" 0600', str(target))
    assert again.returncode == 1, "the same content again must report no change"
    assert target.stat().st_mtime_ns == before and not list(tmp_path.glob("etc/tmp*"))
    changed = _sh('printf "b\\n" | put "$1"', str(target))
    assert changed.returncode == 0 and target.read_text() == "b\n"


def test_iface_of_names_the_interface_holding_an_address():
    assert _sh('iface_of 127.0.0.1').stdout.strip() == "lo"
    missing = _sh('iface_of 192.0.2.254')
    assert missing.returncode != 0 and "no interface holds 192.0.2.254" in missing.stdout + \
        missing.stderr


def _guards(lines: List[str], index: int) -> List[str]:
    """The conditions lines[index] runs under: each enclosing `if` (or, in an `elif`
    branch, that `elif` rather than its `if`), innermost first."""
    out: List[str] = []
    depth = 0
    in_elif = False
    for line in reversed(lines[:index]):
        s = line.strip()
        if s == "fi":
            depth += 1
        elif s.startswith("if ") and depth > 0:
            depth -= 1
        elif s.startswith("elif ") and depth == 0 and not in_elif:
            out.append(s)
            in_elif = True
        elif s.startswith("if ") and depth == 0:
            if not in_elif:
                out.append(s)
            in_elif = False
    return out


@pytest.mark.parametrize("name", ["router.sh", "node.sh", "client.sh"])
def test_provisioning_changes_nothing_when_run_again(name):
    """Static: packages only through `need` (installs what is missing), files only through
    `put` (writes a change only), appends behind a grep, restarts only on a change, and the
    one-time steps (k3s installer, image build) behind what they create."""
    text = (PROVISION / name).read_text()
    lines = text.splitlines()
    assert "apt-get" not in text, "install packages with need (provision/common.sh)"
    assert re.search(r"^need ", text, re.M)
    for i, line in enumerate(lines):
        s = line.strip()
        if s.startswith("#"):
            continue
        if ">>" in s:
            assert any("grep -q" in g for g in _guards(lines, i)), \
                f"{name}:{i + 1}: unguarded append"
        elif re.search(r">\s*/etc/", s):
            pytest.fail(f"{name}:{i + 1}: write /etc files with put")
        if "systemctl restart" in s:
            guards = _guards(lines, i)
            assert guards and ("put " in guards[0] or "changed" in guards[0]), \
                f"{name}:{i + 1}: restart under {guards}"
        if "get.k3s.io" in s:
            assert "if ! command -v k3s >/dev/null; then" in _guards(lines, i), name
        if s.startswith("buildah build"):
            assert any('[ "$built" != "$sum" ]' in g for g in _guards(lines, i)), \
                f"{name}: the image build is not behind its stamp"


def test_node_provisioning_keeps_k3s_out_of_pyxlbs_way():
    text = (PROVISION / "node.sh").read_text()
    assert re.search(r"disable:\n  - servicelb\n  - traefik", text)
    assert "flannel-iface: $IFACE" in text and "node-ip: $NODE_IP" in text
    assert "kubectl apply -k /vagrant/deploy" in text
    assert "k3s ctr -n k8s.io images import" in text
    assert "kubectl apply -f /vagrant/vagrant/manifests/pool.yaml" in text
    assert '"PYXLB_INTERFACE\\":\\"$IFACE\\"' in text
    assert "mount -t bpf bpffs /sys/fs/bpf" in text
    assert 'route "$CLIENT_NET" "$ROUTER_IP"' in text


def test_router_provisioning_forwards_by_the_l4_hash():
    text = (PROVISION / "router.sh").read_text()
    for setting in ("net.ipv4.ip_forward = 1", "net.ipv4.fib_multipath_hash_policy = 1",
                    "net.ipv6.fib_multipath_hash_policy = 1"):
        assert setting in text
    assert "python3 -m pyxlb.lab.scenarios router-config" in text


def test_router_config_is_pyxlbs_upstream_config(capsys):
    """router.sh writes what `pyxlb.lab.scenarios router-config` prints for the Vagrantfile's
    nodes: upstream_router_config's BIRD file (merge paths, host routes from each node)."""
    c = _constants()
    nodes = [(ip, int(c["NODE_ASN"])) for ip in _nodes().values()]
    args = ["router-config", "--router-id", c["ROUTER_IP"], "--asn", c["ROUTER_ASN"]]
    for ip, asn in nodes:
        args += ["--node", f"{ip}={asn}"]
    assert scenarios.main(args) == 0
    out = capsys.readouterr().out
    assert out == upstream_router_config(c["ROUTER_IP"], int(c["ROUTER_ASN"]), nodes) + "\n"
    assert "merge paths yes;" in out
    for ip, _ in nodes:
        assert f"neighbor {ip} as {c['NODE_ASN']};" in out


# -- pyxlb.lab.scenarios: the expected-vs-actual table ----------------------------------------

def test_pod_shares_follow_pods_not_nodes():
    assert scenarios.pod_shares({"n1": 2, "n2": 1, "n3": 0}) == \
        {"n1": 2 / 3, "n2": 1 / 3, "n3": 0.0}
    assert scenarios.even_shares(["a", "b"]) == {"a": 0.5, "b": 0.5}


@pytest.mark.parametrize("call, message", [
    (lambda: scenarios.pod_shares({"n1": 0}), "no node holds a pod"),
    (lambda: scenarios.pod_shares({"n1": -1}), "pod count of 'n1' is -1"),
    (lambda: scenarios.even_shares([]), "no eligible node"),
    (lambda: scenarios.even_shares(["a", "a"]), "named twice"),
    (lambda: scenarios.compare({"a": 1.0}, {}), "no connection was counted"),
    (lambda: scenarios.compare({"a": 0.5}, {"a": 1}), "add up to 0.500, not 1"),
    (lambda: scenarios.compare({"a": 1.0}, {"a": 1}, tolerance=0), "tolerance 0"),
    (lambda: scenarios.compare({"a": 1.0}, {"a": 1.5}), "hit count of 'a' is 1.5"),
    (lambda: scenarios.parse_counts("node1=2,node2"), "'node2' in 'node1=2,node2'"),
    (lambda: scenarios.parse_counts("a=1,a=2"), "'a' appears twice"),
    (lambda: scenarios.parse_counts(""), "names no node"),
    (lambda: scenarios.parse_networks("a=10.0.0.0/33"), "a=10.0.0.0/33"),
    (lambda: scenarios.parse_answer("only two"), "expected '<name> <client> <port>'"),
])
def test_bad_input_is_one_clear_error(call, message):
    with pytest.raises(ScenarioError, match=re.escape(message)):
        call()


def test_compare_within_tolerance_passes_and_outside_fails():
    expected = scenarios.pod_shares({"n1": 2, "n2": 1, "n3": 0})
    good = scenarios.compare(expected, {"n1": 190, "n2": 110}, tolerance=0.10)
    assert good.ok and good.total == 300 and not good.failed
    assert [(r.name, r.hits) for r in good.rows] == [("n1", 190), ("n2", 110), ("n3", 0)]
    even = scenarios.compare(expected, {"n1": 150, "n2": 150}, tolerance=0.10)
    assert not even.ok and even.failed == ["n1", "n2"]     # split by nodes: wrong
    edge = scenarios.compare({"a": 0.5, "b": 0.5}, {"a": 6, "b": 4}, tolerance=0.10)
    assert edge.ok, "a difference of exactly the tolerance passes"


def test_compare_wants_exactly_nothing_where_nothing_is_expected():
    expected = scenarios.pod_shares({"n1": 2, "n2": 1, "n3": 0})
    one = scenarios.compare(expected, {"n1": 200, "n2": 99, "n3": 1})
    assert one.failed == ["n3"], "one connection to a node without pods is a fault"
    stray = scenarios.compare(expected, {"n1": 200, "n2": 99, "other": 1})
    assert stray.failed == ["other"] and stray.rows[-1].expected == 0


def test_table_shows_expected_beside_actual():
    expected = scenarios.pod_shares({"node1": 2, "node2": 1, "node3": 0})
    table = scenarios.compare(expected, {"node1": 150, "node2": 150}, title="per node").table()
    lines = table.splitlines()
    assert lines[0] == ("per node: 300 connections, tolerance ±10 points "
                        "(0 expected means exactly 0)")
    assert lines[1].split() == ["name", "expected", "actual", "hits", "result"]
    assert lines[2].split() == ["node1", "66.7%", "50.0%", "150", "FAIL"]
    assert lines[3].split() == ["node2", "33.3%", "50.0%", "150", "FAIL"]
    assert lines[4].split() == ["node3", "0.0%", "0.0%", "0", "OK"]
    assert lines[5].strip() == "=> FAIL (node1, node2)"
    # the columns line up
    assert len({line.index("%") for line in lines[2:5]}) == 1


def test_parsers():
    assert scenarios.parse_counts(" node1=2, node2=1,node3=0 ") == \
        {"node1": 2, "node2": 1, "node3": 0}
    nets = scenarios.parse_networks("node1=10.42.0.0/24+10.77.2.31,node2=10.42.1.0/24")
    assert scenarios.owner("10.42.0.1", nets) == "node1"
    assert scenarios.owner("10.77.2.31", nets) == "node1"
    assert scenarios.owner("10.42.1.0", nets) == "node2"
    assert scenarios.owner("10.77.1.2", nets) == "other"
    assert scenarios.owner("junk", nets) == "other"
    assert scenarios.parse_answer("echo-a-1@node1 10.77.1.2 40000\n") == \
        Answer("echo-a-1", "node1", "10.77.1.2")
    assert scenarios.parse_answer("n2 10.77.1.2 40000") == Answer("n2", "n2", "10.77.1.2")


def _answers(spec):
    return [Answer(f"p-{node}", node, client) for node, client, n in spec for _ in range(n)]


def test_measure_local_checks_shares_client_address_and_failures():
    pods = {"node1": 2, "node2": 1, "node3": 0}
    ok, text = scenarios.measure(_answers([("node1", "10.77.1.2", 66), ("node2", "10.77.1.2", 34)]),
                                 0, pods=pods, policy="Local", client="10.77.1.2")
    assert ok, text
    assert "client address the pods saw: expected 10.77.1.2 only; actual 10.77.1.2 x100  OK" \
        in text
    assert text.endswith("failed connections: expected 0; actual 0  OK")
    ok, text = scenarios.measure(_answers([("node1", "10.42.0.0", 66), ("node2", "10.77.1.2", 34)]),
                                 2, pods=pods, policy="Local", client="10.77.1.2")
    assert not ok
    assert "10.42.0.0 x66, 10.77.1.2 x34  FAIL" in text
    assert "failed connections: expected 0; actual 2  FAIL" in text


def test_measure_cluster_expects_snat_and_even_entry():
    pods = {"node1": 2, "node2": 1, "node3": 0}
    entries = scenarios.parse_networks(
        "node1=10.42.0.0/24+10.77.2.31,node2=10.42.1.0/24+10.77.2.32,node3=10.42.2.0/24")
    answers = _answers([("node1", "10.42.0.0", 22), ("node1", "10.42.1.0", 22),
                        ("node1", "10.42.2.0", 22), ("node2", "10.42.0.1", 11),
                        ("node2", "10.42.1.1", 12), ("node2", "10.42.2.0", 11)])
    ok, text = scenarios.measure(answers, 0, pods=pods, policy="Cluster", client="10.77.1.2",
                                 entries=entries)
    assert ok, text
    assert "entry node, from the SNAT address (expected: even)" in text
    skewed = _answers([("node1", "10.42.0.0", 66), ("node2", "10.42.1.0", 34)])
    ok, text = scenarios.measure(skewed, 0, pods=pods, policy="Cluster", client="10.77.1.2",
                                 entries=entries)
    assert not ok and "=> FAIL (node1, node3)" in text     # node2's 34 of 100 is a third
    with pytest.raises(ScenarioError, match="policy 'Both'"):
        scenarios.measure(answers, 0, pods=pods, policy="Both", client=None)


# -- against a real echo server on 127.0.0.1 --------------------------------------------------

@pytest.fixture
def echo():
    server = scenarios.make_server("echo-a-1@node1", 0, host="127.0.0.1")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_probe_and_serve_over_real_connections(echo, capsys):
    answers, failed = scenarios.probe("127.0.0.1", echo, 5)
    assert failed == 0
    assert answers == [Answer("echo-a-1", "node1", "127.0.0.1")] * 5
    logged = [line for line in capsys.readouterr().out.splitlines() if line]
    assert len(logged) == 5
    assert all(re.fullmatch(r'echo-a-1@node1: 127\.0\.0\.1 port \d+: "GET / HTTP/1\.1" 200 -',
                            line) for line in logged), logged
    # each request on its own connection: a new source port every time
    assert len({line.split()[3] for line in logged}) == 5


def test_main_measure_prints_expected_beside_actual(echo, capsys):
    base = ["measure", "--vip", "127.0.0.1", "--port", str(echo), "--count", "20",
            "--client", "127.0.0.1"]
    assert scenarios.main(base + ["--pods", "node1=1,node2=0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("external IP: 127.0.0.1; 20 connections")
    assert out.rstrip().endswith("RESULT: OK")
    assert scenarios.main(base + ["--pods", "node1=1,node2=1"]) == 1
    out = capsys.readouterr().out
    assert "=> FAIL (node1, node2)" in out and out.rstrip().endswith("RESULT: FAIL")


def test_main_counts_refused_connections_and_reports_bad_arguments(capsys):
    # a port nothing listens on (bound, never listening): every connection is refused
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        answers, failed = scenarios.probe("127.0.0.1", port, 3, timeout=1)
    assert (answers, failed) == ([], 3)
    with pytest.raises(SystemExit) as exc:
        scenarios.main(["measure", "--vip", "127.0.0.1", "--pods", "node1=x"])
    assert exc.value.code == 2
    assert "argument --pods: 'node1=x' in 'node1=x': expected NAME=COUNT" in \
        capsys.readouterr().err
    assert scenarios.main(["measure", "--vip", "127.0.0.1", "--pods", "n=1", "--count",
                           "0"]) == 2
    assert "pyxlb.lab.scenarios: error: --count 0: at least one connection" in \
        capsys.readouterr().err


def test_scenarios_module_needs_only_the_standard_library():
    """The client VM runs it, and the router its router-config, from the checkout with
    Debian's python3: nothing built, nothing from PyPI."""
    python = shutil.which("python3", path="/usr/bin")
    assert python, "Debian's /usr/bin/python3 is missing"
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r});"
            "import pyxlb.lab.scenarios, pyxlb.lab.http, pyxlb.announce.bgp;"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('pyroute2', 'lightkube', 'click', 'yaml', 'jsonschema', 'prometheus_client') or "
            "m.startswith('pyxlb._'));"
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([python, "-I", "-c", code], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


def test_router_config_runs_on_debians_python():
    """What router.sh runs, run the same way: Debian's python3 with the Debian packages
    router.sh installs (python3-jsonschema checks the settings), from the checkout."""
    python = shutil.which("python3", path="/usr/bin")
    assert python, "Debian's /usr/bin/python3 is missing"
    c = _constants()
    nodes = [(ip, int(c["NODE_ASN"])) for ip in _nodes().values()]
    args = ["router-config", "--router-id", c["ROUTER_IP"], "--asn", c["ROUTER_ASN"]]
    for ip, asn in nodes:
        args += ["--node", f"{ip}={asn}"]
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r});"
            f"from pyxlb.lab.scenarios import main; sys.exit(main({args!r}))")
    done = subprocess.run([python, "-I", "-c", code], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == upstream_router_config(c["ROUTER_IP"], int(c["ROUTER_ASN"]),
                                                 nodes) + "\n"
    bad = args[:-1] + [f"{nodes[-1][0]}=0"]
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r});"
            f"from pyxlb.lab.scenarios import main; sys.exit(main({bad!r}))")
    refused = subprocess.run([python, "-I", "-c", code], capture_output=True, text=True,
                             timeout=30)
    assert refused.returncode != 0 and "AS" in refused.stderr, refused.stderr
