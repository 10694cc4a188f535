"""deploy/, the Dockerfile and the Grafana dashboard, checked without a cluster.

Every manifest is validated against the Kubernetes API schemas (kubernetes-validate, strict:
an unknown field is an error) for the oldest Kubernetes pyxlb supports and a recent one;
the IPPool example against the CRD's own schema. Then what a reviewer would otherwise check
by eye: the DaemonSet's privileges, probes, ports and settings agree with each other and
with `pyxlb agent`; RBAC grants exactly the list in docs/deploy.md; the dashboard queries
only metrics pyxlb exports; the image builds in named stages with libbpf at run time.
The capabilities themselves are tried against the kernel in
tests/datapath/test_capabilities.py.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "pyxlb-dashboard.json"
DOCS = ROOT / "docs" / "deploy.md"

# 1.30: the oldest Kubernetes the manifests need (securityContext.appArmorProfile, and
# Service status ipMode on by default); 1.34: a recent release.
K8S_VERSIONS = ("1.30", "1.34")

# `pyxlb agent`'s settings as environment variables, each with what its value must be. The
# agent's click command (pyxlb/cli/agent.py) reads exactly these names; keep the two in
# step until a test can read them from `pyxlb agent --help`.
_PORT = range(0, 65536)


def _bool(v: str) -> bool:
    return v.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off")


def _number(lo: float, hi: float):
    def check(v: str) -> bool:
        try:
            return lo <= float(v) <= hi
        except ValueError:
            return False
    return check


def _int(lo: int, hi: int):
    return lambda v: v.isdigit() and lo <= int(v) <= hi


AGENT_ENV = {
    "NODE_NAME": lambda v: bool(v),
    "PYXLB_INTERFACE": lambda v: all(re.fullmatch(r"[^\s/,]{1,15}", i.strip())
                                     for i in v.split(",")),
    "PYXLB_XDP_MODE": lambda v: v in ("native", "generic"),
    "PYXLB_PIN_DIR": lambda v: v.startswith("/"),
    "KUBECONFIG": lambda v: bool(v),
    "PYXLB_API_SERVER": lambda v: v.startswith(("http://", "https://")),
    "PYXLB_LB_CLASS": lambda v: re.fullmatch(r"[a-z0-9.-]+/[A-Za-z0-9._-]+", v) is not None,
    "PYXLB_DEFAULT_CLASS": _bool,
    "PYXLB_NAMESPACES": lambda v: all(re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?",
                                                   n.strip()) for n in v.split(",")),
    "PYXLB_SERVICE_ACCOUNT_DIR": lambda v: v.startswith("/"),
    "PYXLB_CONTROLLER": _bool,
    "POD_NAMESPACE": lambda v: bool(v),
    "PYXLB_LEASE_NAME": lambda v: re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", v) is not None,
    "PYXLB_LEASE_DURATION": _number(1, 3600),
    "PYXLB_HEALTH_INTERVAL": _number(0.1, 600),
    "PYXLB_HEALTH_TIMEOUT": _number(0.05, 60),
    "PYXLB_SEED": _int(0, 0xFFFFFFFF),
    "PYXLB_MTU": _int(576, 65535),
    "PYXLB_RING_SIZE": _int(2, 655373),
    "PYXLB_ANNOUNCE": _bool,
    "PYXLB_L2_PORT": _int(1, 65535),
    "PYXLB_L2_INTERVAL": _number(0.01, 10),
    "PYXLB_L2_DEAD_AFTER": _number(0.05, 60),
    "PYXLB_L2_KEY": lambda v: bool(v),
    "PYXLB_BIRD_DIR": lambda v: v.startswith("/"),
    "PYXLB_MAX_VIPS": _int(1, 1 << 20),
    "PYXLB_MAX_FLOWS": _int(1024, 1 << 26),
    "PYXLB_MAX_FLOWS6": _int(1024, 1 << 26),
    "PYXLB_MAX_INSERTS": _int(0, 0xFFFFFFFF),
    "PYXLB_CHAIN_WINDOW": _int(0, 86400),
    "PYXLB_LISTEN": lambda v: ipaddress.ip_address(v) is not None,
    "PYXLB_METRICS_PORT": _int(0, 65535),
    "PYXLB_PROBE_PORT": _int(0, 65535),
    "PYXLB_LOG_LEVEL": lambda v: v in ("debug", "info", "warning", "error"),
    "PYXLB_UPGRADE": lambda v: v in ("auto", "never"),
}
# In the cluster the agent uses its service account: these would send it elsewhere.
NOT_IN_CLUSTER = {"KUBECONFIG", "PYXLB_API_SERVER"}

# Every grant the agent needs, and all it may have: (API group, resource, verb, name or "").
# (tests/k8s/test_in_cluster.py checks these against what a running agent really asks for)
CLUSTER_GRANTS = {
    *(("", "services", v, "") for v in ("list", "watch", "patch")),
    ("", "services/status", "patch", ""),
    *(("discovery.k8s.io", "endpointslices", v, "") for v in ("list", "watch")),
    *(("", "nodes", v, "") for v in ("list", "watch")),
    *(("pyxlb.io", r, v, "") for r in ("ippools", "bgppeers") for v in ("list", "watch")),
    ("", "events", "create", ""),
}
LEASE = "pyxlb-controller"
NAMESPACE_GRANTS = {
    ("coordination.k8s.io", "leases", "create", ""),
    ("coordination.k8s.io", "leases", "get", LEASE),
    ("coordination.k8s.io", "leases", "update", LEASE),
}

# Metrics the dashboard may query. The datapath's are documented in docs/metrics.md (a test
# below holds the two together); the agent's are those `pyxlb agent` exports.
DATAPATH_METRICS = {
    "pyxlb_vip_packets_total", "pyxlb_vip_bytes_total", "pyxlb_vip_new_flows_total",
    "pyxlb_backend_packets_total", "pyxlb_backend_bytes_total",
    "pyxlb_backend_new_flows_total", "pyxlb_xdp_actions_total", "pyxlb_flow_lookups_total",
    "pyxlb_icmp_steered_total", "pyxlb_flow_midstream_misses_total",
    "pyxlb_vips", "pyxlb_backends", "pyxlb_flow_table_entries",
    "pyxlb_flow_table_max_entries", "pyxlb_flow_table_ways", "pyxlb_flow_insert_limited_total",
}
AGENT_METRICS = {
    "pyxlb_agent_reconciles_total", "pyxlb_agent_services",
    "pyxlb_agent_watch_restarts_total", "pyxlb_agent_api_up", "pyxlb_agent_leader",
    "pyxlb_ipam_addresses_in_use", "pyxlb_agent_node_health",
}
HISTOGRAMS = {"pyxlb_apply_duration_seconds", "pyxlb_agent_reconcile_seconds"}


# -- loading -------------------------------------------------------------------------------

def manifest_files() -> List[Path]:
    return sorted(p for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml")


def docs_of(path: Path) -> List[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def installed() -> Iterator[dict]:
    """Every object `kubectl apply -k deploy/` creates."""
    for name in yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"]:
        yield from docs_of(DEPLOY / name)


def one(kind: str, name: str = None) -> dict:
    found = [d for d in installed() if d["kind"] == kind
             and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''} in deploy/, found {len(found)}"
    return found[0]


def agent_container() -> dict:
    (c,) = one("DaemonSet")["spec"]["template"]["spec"]["containers"]
    return c


def settings() -> Dict[str, str]:
    return one("ConfigMap")["data"]


def crd_schema() -> dict:
    (version,) = one("CustomResourceDefinition", "ippools.pyxlb.io")["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


# -- schemas -------------------------------------------------------------------------------

@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifests_validate_against_kubernetes(path, version):
    docs = docs_of(path)
    assert docs, f"{path} holds no object"
    for doc in docs:
        if doc["apiVersion"].startswith("pyxlb.io/"):
            continue        # our own kinds: validated against the CRD below
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.relative_to(ROOT)}: {doc['kind']} {doc['metadata']['name']} "
                        f"is invalid for Kubernetes {version}: {exc.message} at "
                        f"{'.'.join(map(str, exc.absolute_path))}")


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_what_kubectl_kustomize_renders_validates(version):
    """`kubectl kustomize deploy/` (the real kubectl's kustomize) renders the install, with
    the image name and tag the kustomization sets, and every object it renders is valid."""
    out = subprocess.run(["kubectl", "kustomize", str(DEPLOY)], capture_output=True,
                         text=True, check=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(d["kind"] for p in manifest_files()
                           if "examples" not in p.parts for d in docs_of(p))
    for doc in docs:
        if doc["apiVersion"].startswith("pyxlb.io/"):
            continue
        kubernetes_validate.validate(doc, version, strict=True)
    (ds,) = [d for d in docs if d["kind"] == "DaemonSet"]
    image = ds["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"pyxlb:{tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['version']}"


def test_the_validator_is_strict():
    """A misspelt field must fail: otherwise the check above proves little."""
    ds = copy.deepcopy(one("DaemonSet"))
    ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilites"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="capabilites"):
        kubernetes_validate.validate(ds, K8S_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest():
    kust = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    listed = kust["resources"]
    assert len(listed) == len(set(listed))
    wanted = sorted(str(p.relative_to(DEPLOY)) for p in manifest_files()
                    if p.parent.name not in ("examples", "grafana"))
    assert sorted(listed) == wanted
    # the Namespace first and the CRD before anything might use it
    assert listed[0] == "namespace.yaml"
    assert listed.index("crds/ippools.yaml") < listed.index("daemonset.yaml")


def test_everything_lives_in_one_namespace():
    ns = one("Namespace")["metadata"]["name"]
    assert one("Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == \
        "privileged"
    cluster_scoped = {"Namespace", "CustomResourceDefinition", "ClusterRole",
                      "ClusterRoleBinding"}
    for doc in installed():
        where = doc["metadata"].get("namespace")
        assert (where is None) == (doc["kind"] in cluster_scoped), doc["kind"]
        assert where in (None, ns), f"{doc['kind']} {doc['metadata']['name']} is in {where}"
        for subject in doc.get("subjects", ()):
            assert subject["namespace"] == ns


# -- the IPPool CRD ------------------------------------------------------------------------

def _walk(schema: dict, where: str = "") -> Iterator[Tuple[str, dict]]:
    yield where or ".", schema
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{where}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{where}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{where}{{}}")


def test_crd_names_and_columns():
    crd = one("CustomResourceDefinition", "ippools.pyxlb.io")
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{spec['names']['plural']}.{spec['group']}" \
        == "ippools.pyxlb.io"
    assert spec["scope"] == "Cluster"
    assert spec["names"]["kind"] == "IPPool" and spec["names"]["shortNames"] == ["ipp"]
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {"Addresses": ".spec.addresses", "Announce": ".spec.announce",
                       "Auto Assign": ".spec.autoAssign", "Age": ".metadata.creationTimestamp"}


def test_crd_schema_is_structural():
    """What the API server demands of a CRD schema: a type on every node, and defaults
    that satisfy the schema they sit in."""
    for where, node in _walk(crd_schema()):
        assert node.get("type") in ("object", "array", "string", "boolean", "integer",
                                    "number"), f"{where} has no type"
        if "default" in node:
            jsonschema.validate(node["default"], node)
    spec = crd_schema()["properties"]["spec"]
    assert set(spec["properties"]) == {"addresses", "announce", "autoAssign", "avoidBuggyIPs",
                                       "serviceSelector"}
    assert spec["properties"]["announce"]["default"] == "l2"
    assert spec["required"] == ["addresses"]
    assert spec["properties"]["autoAssign"]["default"] is True
    assert spec["properties"]["avoidBuggyIPs"]["default"] is False


def _pool_entry_ok(text: str) -> bool:
    if "/" in text:
        ipaddress.ip_network(text)      # strict: host bits must be zero
        return True
    first, last = (ipaddress.ip_address(p) for p in text.split("-"))
    return first.version == last.version and first <= last


def test_example_ippool_matches_the_crd():
    (pool,) = docs_of(DEPLOY / "examples" / "ippool.yaml")
    crd = one("CustomResourceDefinition", "ippools.pyxlb.io")
    assert pool["apiVersion"] == f"{crd['spec']['group']}/v1alpha1"
    assert pool["kind"] == crd["spec"]["names"]["kind"]
    jsonschema.validate(pool, crd_schema())
    addresses = pool["spec"]["addresses"]
    assert all(_pool_entry_ok(a) for a in addresses)
    assert {ipaddress.ip_address(re.split("[/-]", a)[0]).version for a in addresses} == {4, 6}


@pytest.mark.parametrize("spec, fault", [
    ({}, "'addresses' is a required property"),
    ({"addresses": []}, "should be non-empty"),
    ({"addresses": ["192.0.2.0/24"], "autoAssign": "yes"}, "is not of type 'boolean'"),
    ({"addresses": ["a pool"]}, "does not match"),
    ({"addresses": ["192.0.2.0/24"],
      "serviceSelector": {"matchExpressions": [{"key": "k", "operator": "Like"}]}},
     "is not one of"),
    ({"addresses": ["192.0.2.0/24"], "serviceSelector": {"matchLabels": {"k": 1}}},
     "is not of type 'string'"),
])
def test_crd_schema_refuses_bad_pools(spec, fault):
    pool = {"apiVersion": "pyxlb.io/v1alpha1", "kind": "IPPool",
            "metadata": {"name": "bad"}, "spec": spec}
    with pytest.raises(jsonschema.ValidationError, match=re.escape(fault)):
        jsonschema.validate(pool, crd_schema())


def test_example_service_is_ours_with_local_policy():
    svc, deploy = docs_of(DEPLOY / "examples" / "service.yaml")
    assert svc["spec"]["type"] == "LoadBalancer"
    assert svc["spec"]["loadBalancerClass"] == settings()["PYXLB_LB_CLASS"]
    assert svc["spec"]["externalTrafficPolicy"] == "Local"
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()


# -- the DaemonSet -------------------------------------------------------------------------

def test_daemonset_privileges():
    pod = one("DaemonSet")["spec"]["template"]["spec"]
    sc = agent_container()["securityContext"]
    assert sc["privileged"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    added = sc["capabilities"]["add"]
    # which of these, tests/datapath/test_capabilities.py decides against the kernel
    assert added and set(added) <= {"BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "NET_RAW",
                                    "NET_BIND_SERVICE"}, added
    if "SYS_ADMIN" not in added:
        assert sc.get("allowPrivilegeEscalation") is False
    assert sc["readOnlyRootFilesystem"] is True
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert not pod.get("hostPID") and not pod.get("hostIPC")
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    for doc in installed():
        assert '"privileged": true' not in json.dumps(doc), doc["metadata"]["name"]


def test_daemonset_runs_everywhere_and_updates_one_node_at_a_time():
    ds = one("DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["priorityClassName"] == "system-node-critical"
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate",
                                            "rollingUpdate": {"maxUnavailable": 1}}
    assert ds["spec"]["selector"]["matchLabels"].items() <= \
        ds["spec"]["template"]["metadata"]["labels"].items()
    assert 0 < pod["terminationGracePeriodSeconds"] <= 60
    res = agent_container()["resources"]
    assert res["requests"]["memory"] == "128Mi" and res["requests"]["cpu"]
    assert res["limits"]["memory"] and "cpu" not in res["limits"]


def test_bpffs_is_the_hosts():
    pod = one("DaemonSet")["spec"]["template"]["spec"]
    (vol,) = [v for v in pod["volumes"] if "hostPath" in v]
    assert vol["hostPath"] == {"path": "/sys/fs/bpf", "type": "Directory"}
    (mount,) = [m for m in agent_container()["volumeMounts"] if m["name"] == vol["name"]]
    assert mount["mountPath"] == "/sys/fs/bpf"
    # Bidirectional would need a privileged container, and the agent mounts nothing
    assert mount["mountPropagation"] == "HostToContainer"
    assert settings()["PYXLB_PIN_DIR"].startswith(mount["mountPath"] + "/")


def test_ports_and_probes_agree_with_the_settings():
    c = agent_container()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    cfg = settings()
    assert ports["metrics"] == int(cfg["PYXLB_METRICS_PORT"])
    probe_port = int(cfg["PYXLB_PROBE_PORT"])
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"),
                        ("readinessProbe", "/readyz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path
        assert ports.get(get["port"], get["port"]) == probe_port, probe
    notes = one("DaemonSet")["spec"]["template"]["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true"
    assert int(notes["prometheus.io/port"]) == ports["metrics"]
    assert notes["prometheus.io/path"] == "/metrics"


def test_agent_settings_are_agent_options():
    c = agent_container()
    assert c["args"] == ["agent"]
    (source,) = c["envFrom"]
    assert source["configMapRef"]["name"] == one("ConfigMap")["metadata"]["name"]
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    names = set(env) | set(settings())
    assert names <= set(AGENT_ENV), f"not `pyxlb agent` settings: {names - set(AGENT_ENV)}"
    assert not names & NOT_IN_CLUSTER
    for key, value in settings().items():
        assert isinstance(value, str) and AGENT_ENV[key](value), f"{key}: {value!r}"


def test_flow_table_sizes_are_the_datapaths_defaults():
    """The ConfigMap and `pyxlb agent` ask for the flow tables the object is built with."""
    from pyxlb import _layouts as L
    from pyxlb.cli.agent import agent
    from pyxlb.datapath import map_sizes, rated_flows
    defaults = {p.envvar: p.default for p in agent.params if p.envvar}
    want = {"PYXLB_MAX_FLOWS": rated_flows(L.FLOW4_SETS),
            "PYXLB_MAX_FLOWS6": rated_flows(L.FLOW6_SETS)}
    assert map_sizes(max_flows=want["PYXLB_MAX_FLOWS"], max_flows6=want["PYXLB_MAX_FLOWS6"]) \
        == {"xlb_flowsets4": L.FLOW4_SETS, "xlb_flowsets6": L.FLOW6_SETS}
    for key, value in want.items():
        assert defaults[key] == value
        assert int(settings()[key]) == value


def test_identity_and_image():
    pod = one("DaemonSet")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == one("ServiceAccount")["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is True
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    name, tag = agent_container()["image"].rsplit(":", 1)
    assert tag == version, "the image tag follows the package version"
    kust = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert kust["images"] == [{"name": name, "newTag": version}]


# -- RBAC ----------------------------------------------------------------------------------

def _grants(role: dict) -> set:
    out = set()
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs", "resourceNames"}, rule
        for g in rule["apiGroups"]:
            for r in rule["resources"]:
                for v in rule["verbs"]:
                    for n in rule.get("resourceNames") or [""]:
                        out.add((g, r, v, n))
    return out


def test_rbac_grants_exactly_what_the_agent_needs():
    cluster = _grants(one("ClusterRole"))
    assert cluster == CLUSTER_GRANTS, (f"extra: {sorted(cluster - CLUSTER_GRANTS)}; "
                                       f"missing: {sorted(CLUSTER_GRANTS - cluster)}")
    role = one("Role")
    assert _grants(role) == NAMESPACE_GRANTS
    assert settings()["PYXLB_LEASE_NAME"] == LEASE
    assert role["metadata"]["namespace"] == one("Namespace")["metadata"]["name"]
    for grant in cluster | _grants(role):
        assert "*" not in "".join(grant) and grant[1] != "secrets", grant


def test_bindings_tie_the_roles_to_the_service_account():
    sa = one("ServiceAccount")["metadata"]
    for binding, role in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        b = one(binding)
        assert b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": role,
                                "name": one(role)["metadata"]["name"]}
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": sa["name"],
                                  "namespace": sa["namespace"]}]


# -- Grafana -------------------------------------------------------------------------------

def _panels(dash: dict) -> Iterator[dict]:
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", ())


def _metric_names(expr: str) -> set:
    names = set()
    for word in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", re.sub(r'"[^"]*"', "", expr)):
        if word.startswith("pyxlb_"):
            for suffix in ("_bucket", "_sum", "_count"):
                if word.endswith(suffix) and word[:-len(suffix)] in HISTOGRAMS:
                    word = word[:-len(suffix)]
            names.add(word)
    return names


def test_dashboard_queries_only_known_metrics():
    dash = json.loads(DASHBOARD.read_text())
    known = DATAPATH_METRICS | AGENT_METRICS | HISTOGRAMS
    used = set()
    for p in _panels(dash):
        for t in p.get("targets", ()):
            names = _metric_names(t["expr"])
            assert names, f"panel {p['title']!r}: no pyxlb metric in {t['expr']!r}"
            assert names <= known, f"panel {p['title']!r}: unknown {names - known}"
            used |= names
    # every metric has a panel
    assert used == known, f"not on the dashboard: {sorted(known - used)}"


def test_datapath_metric_names_are_documented():
    documented = set(re.findall(r"`(pyxlb_[a-z_]+)`", (ROOT / "docs" / "metrics.md").read_text()))
    assert DATAPATH_METRICS | {"pyxlb_apply_duration_seconds"} <= documented


def test_dashboard_shape():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["schemaVersion"] >= 37          # Grafana 10
    assert dash["uid"] and dash["title"]
    (ds,) = [v for v in dash["templating"]["list"] if v["type"] == "datasource"]
    assert (ds["name"], ds["query"]) == ("datasource", "prometheus")
    rows = [p["title"] for p in dash["panels"] if p["type"] == "row"]
    assert rows == ["Traffic", "Datapath outcomes", "Agent"]
    ids = [p["id"] for p in _panels(dash)]
    assert len(ids) == len(set(ids))
    for p in _panels(dash):
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
            assert p["targets"] and all(t["datasource"]["uid"] == "${datasource}"
                                        for t in p["targets"]), p["title"]
            assert p.get("description"), f"panel {p['title']!r} says nothing about itself"


# -- the image -----------------------------------------------------------------------------

def _stages() -> Dict[str, List[str]]:
    """{stage name: its instruction lines, continuations joined}."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    stages: Dict[str, List[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, flags=re.I)
        if line.upper().startswith("FROM "):
            assert m, f"every stage is named: {line!r}"
            current = m.group(2)
            stages[current] = [line]
        else:
            stages[current].append(line)
    return stages


def _apt_packages(lines: List[str]) -> set:
    out = set()
    for line in lines:
        for m in re.finditer(r"apt-get install ([^&]*)", line):
            out |= {w for w in m.group(1).split() if not w.startswith("-")}
    return out


def test_dockerfile_stages():
    stages = _stages()
    assert list(stages) == ["build", "runtime"]
    build, runtime = stages["build"], stages["runtime"]
    assert build[0].split()[1] == "debian:bookworm"
    assert runtime[0].split()[1] == "debian:bookworm-slim"
    assert {"gcc", "clang", "libbpf-dev", "libelf-dev", "zlib1g-dev", "pkg-config",
            "python3-dev", "python3-venv"} <= _apt_packages(build)
    assert any("pip wheel" in line for line in build)
    packages = _apt_packages(runtime)
    assert {"python3", "libbpf1"} <= packages
    assert not {p for p in packages if p.endswith("-dev") or p in ("clang", "llvm")}
    assert any(line.startswith("COPY --from=build ") for line in runtime)
    assert 'ENTRYPOINT ["pyxlb"]' in runtime and 'CMD ["agent"]' in runtime


def test_dockerignore_lets_in_what_the_build_reads():
    rules = [r for r in (ROOT / ".dockerignore").read_text().splitlines()
             if r and not r.startswith("#")]
    assert rules[0] == "*", "an allow-list: nothing enters the context unless named"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["readme"]
    assert {"pyproject.toml", "setup.py", readme, "pyxlb", "ext", "xdp"} <= allowed
    assert all((ROOT / a).exists() for a in allowed), allowed


def test_install_doc_names_each_capability():
    text = DOCS.read_text()
    for cap in agent_container()["securityContext"]["capabilities"]["add"]:
        assert f"CAP_{cap}" in text, f"docs/deploy.md does not explain CAP_{cap}"
    assert "kubectl apply -k deploy/" in text


def test_the_settings_list_is_pyxlb_agents_own():
    """AGENT_ENV above is exactly the environment `pyxlb agent` reads (plus the global
    --pin-dir's): a new option needs a line there, and a renamed one fails here."""
    from pyxlb.cli.root import cli
    from pyxlb.cli.agent import agent

    names = {p.envvar for p in agent.params if getattr(p, "envvar", None)}
    names |= {p.envvar for p in cli.params if getattr(p, "envvar", None)}
    assert names == set(AGENT_ENV)


def bgppeer_schema() -> dict:
    (version,) = one("CustomResourceDefinition", "bgppeers.pyxlb.io")["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def test_bgppeer_crd_is_structural_and_takes_what_the_agent_reads():
    crd = one("CustomResourceDefinition", "bgppeers.pyxlb.io")
    assert crd["spec"]["scope"] == "Cluster" and crd["spec"]["names"]["kind"] == "BGPPeer"
    for where, node in _walk(bgppeer_schema()):
        assert node.get("type") in ("object", "array", "string", "boolean", "integer",
                                    "number"), f"{where} has no type"
        if "default" in node:
            jsonschema.validate(node["default"], node)
    peer = {"apiVersion": "pyxlb.io/v1alpha1", "kind": "BGPPeer", "metadata": {"name": "tor"},
            "spec": {"peerAddress": "10.0.0.1", "peerASN": 64512, "myASN": 64513,
                     "bfd": True, "holdTime": 3, "communities": ["64512:100"],
                     "nodeSelector": {"matchLabels": {"rack": "r1"}}}}
    jsonschema.validate(peer, bgppeer_schema())
    for bad in ({"peerAddress": "10.0.0.1", "peerASN": 64512},          # no myASN
                {"peerAddress": "10.0.0.1", "peerASN": 0, "myASN": 1},
                {"peerAddress": "10.0.0.1", "peerASN": 1, "myASN": 1, "holdTime": 1},
                {"peerAddress": "10.0.0.1", "peerASN": 1, "myASN": 1, "communities": ["x"]}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**peer, "spec": bad}, bgppeer_schema())
