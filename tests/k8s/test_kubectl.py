"""The real kubectl (/usr/bin/kubectl) against the API stand-in, over TLS, with RBAC.

What a user of the Kubernetes lab types: kubectl reads the kubeconfig the stand-in writes,
discovers the API (aggregated discovery, short names, categories), validates on the server
(OpenAPI v3 tells it the PATCH of each kind takes fieldValidation), applies manifests
client-side (strategic merge patch for the built-in kinds, merge patch for custom resources,
the last-applied annotation) and server-side (apply patches, field managers), prints the
server's tables, describes a Service with the address and the Events pyxlb's IP controller
wrote, deletes, and asks the authorizer; its typed ``kubectl create`` shortcuts (namespace,
configmap, serviceaccount, deployment, service, role and binding, token) send protobuf, which
the stand-in reads (tests/support/standin_proto.py). Every test checks kubectl's output and
exit code and the objects the stand-in holds afterwards.
"""

from __future__ import annotations

import base64
import calendar
import json
import os
import re
import ssl
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, List

import httpx2
import pytest
import yaml

from pyxlb.k8s import kube
from pyxlb.k8s import objects as o
from pyxlb.k8s import translate as tr
from pyxlb.k8s.controller import COMPONENT, Controller

from tests.support.standin import ApiStandIn, StandInError

KUBECTL = "/usr/bin/kubectl"
ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY")
AGENT = ("pyxlb-system", "pyxlb-agent")     # deploy/rbac.yaml's ServiceAccount


@pytest.fixture
def api():
    with ApiStandIn(tls=True, authorization="RBAC") as server:
        yield server


class Kubectl:
    """kubectl with its own HOME (its discovery cache) and a kubeconfig written by the
    stand-in, no proxy from the environment."""

    def __init__(self, api: ApiStandIn, home: Path, **who):
        home.mkdir(parents=True, exist_ok=True)
        self.config = api.write_kubeconfig(home / "kubeconfig", **who)
        self.env = {k: v for k, v in os.environ.items() if k.upper() not in PROXY_VARS}
        self.env.update(HOME=str(home), KUBECONFIG=self.config)

    def run(self, *args: str, stdin: str = None) -> subprocess.CompletedProcess:
        return subprocess.run([KUBECTL, *args], env=self.env, cwd=ROOT, input=stdin,
                              capture_output=True, text=True, timeout=60)

    def __call__(self, *args: str, stdin: str = None) -> str:
        """kubectl's stdout; it must succeed and warn about nothing."""
        done = self.run(*args, stdin=stdin)
        assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
        assert done.stderr == "", f"kubectl {' '.join(args)} warned: {done.stderr}"
        return done.stdout

    def fails(self, *args: str, stdin: str = None) -> str:
        """kubectl's stderr; it must fail."""
        done = self.run(*args, stdin=stdin)
        assert done.returncode != 0, f"kubectl {' '.join(args)} succeeded: {done.stdout}"
        return done.stderr


@pytest.fixture
def kubectl(api, tmp_path):
    return Kubectl(api, tmp_path / "admin")


@pytest.fixture
def no_proxy(monkeypatch):
    """pyxlb's own client (lightkube, trust_env with a kubeconfig) must not go through a
    proxy to 127.0.0.1 either."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def table(text: str) -> List[Dict[str, str]]:
    """kubectl's columns as dicts (headers may hold a space: "NODE SELECTOR")."""
    lines = [line for line in text.splitlines() if line.strip()]
    heads = [(m.start(), m.group()) for m in re.finditer(r"\S+(?: \S+)*", lines[0])]
    rows = []
    for line in lines[1:]:
        cells = {}
        for i, (start, name) in enumerate(heads):
            end = heads[i + 1][0] if i + 1 < len(heads) else None
            cells[name] = line[start:end].strip()
        rows.append(cells)
    return rows


def header(text: str) -> List[str]:
    return [m.group() for m in re.finditer(r"\S+(?: \S+)*", text.splitlines()[0])]


def eventually(check, timeout: float = 10.0, what: str = "condition"):
    end = time.monotonic() + timeout
    while True:
        last = check()
        if last or time.monotonic() > end:
            assert last, f"timed out waiting for {what}"
            return last
        time.sleep(0.05)


def example_service(**spec) -> dict:
    docs = list(yaml.safe_load_all((DEPLOY / "examples" / "service.yaml").read_text()))
    svc = next(d for d in docs if d["kind"] == "Service")
    svc["spec"].update(spec)
    return svc


# -- 8: the kubeconfig -------------------------------------------------------------------------


def test_write_kubeconfig_names_the_server_its_ca_and_a_user(api, kubectl, tmp_path):
    config = yaml.safe_load(Path(kubectl.config).read_text())
    assert stat.S_IMODE(os.stat(kubectl.config).st_mode) == 0o600
    cluster = config["clusters"][0]["cluster"]
    assert cluster["server"] == api.url and api.url.startswith("https://127.0.0.1:")
    assert base64.b64decode(cluster["certificate-authority-data"]) == api.ca_pem
    assert config["users"][0]["user"]["token"] == api.admin_token
    # kubectl verifies the server with that CA (no --insecure-skip-tls-verify anywhere)
    version = json.loads(kubectl("version", "-o", "json"))
    assert version["serverVersion"]["gitVersion"].startswith("v1.33")
    who = json.loads(kubectl("auth", "whoami", "-o", "json"))
    assert who["status"]["userInfo"]["username"] == "kubernetes-admin"
    assert "system:masters" in who["status"]["userInfo"]["groups"]

    with pytest.raises(StandInError) as err:        # tokens only for ServiceAccounts that exist
        api.write_kubeconfig(tmp_path / "sa.conf", service_account=AGENT)
    assert err.value.code == 404
    kubectl("apply", "-f", "deploy/namespace.yaml", "-f", "deploy/rbac.yaml")
    agent = Kubectl(api, tmp_path / "agent", service_account=AGENT, namespace="pyxlb-system")
    who = json.loads(agent("auth", "whoami", "-o", "json"))["status"]["userInfo"]
    assert who["username"] == "system:serviceaccount:pyxlb-system:pyxlb-agent"
    assert "system:serviceaccounts:pyxlb-system" in who["groups"]
    assert agent("get", "svc", "-A", "-o", "name") == ""    # its ClusterRole lists Services


# -- 1: discovery ------------------------------------------------------------------------------


def test_api_resources_lists_every_kind_with_its_names_and_scope(api, kubectl):
    rows = {(r["NAME"], r["APIVERSION"]): r for r in table(kubectl("api-resources"))}
    expected = {
        ("services", "v1"): ("svc", "true", "Service"),
        ("nodes", "v1"): ("no", "false", "Node"),
        ("namespaces", "v1"): ("ns", "false", "Namespace"),
        ("configmaps", "v1"): ("cm", "true", "ConfigMap"),
        ("serviceaccounts", "v1"): ("sa", "true", "ServiceAccount"),
        ("events", "v1"): ("ev", "true", "Event"),
        ("events", "events.k8s.io/v1"): ("ev", "true", "Event"),
        ("endpointslices", "discovery.k8s.io/v1"): ("", "true", "EndpointSlice"),
        ("leases", "coordination.k8s.io/v1"): ("", "true", "Lease"),
        ("deployments", "apps/v1"): ("deploy", "true", "Deployment"),
        ("daemonsets", "apps/v1"): ("ds", "true", "DaemonSet"),
        ("customresourcedefinitions", "apiextensions.k8s.io/v1"):
            ("crd,crds", "false", "CustomResourceDefinition"),
        ("ippools", "pyxlb.io/v1alpha1"): ("ipp", "false", "IPPool"),
        ("bgppeers", "pyxlb.io/v1alpha1"): ("bgpp", "false", "BGPPeer"),
        ("clusterroles", "rbac.authorization.k8s.io/v1"): ("", "false", "ClusterRole"),
        ("rolebindings", "rbac.authorization.k8s.io/v1"): ("", "true", "RoleBinding"),
        ("selfsubjectaccessreviews", "authorization.k8s.io/v1"):
            ("", "false", "SelfSubjectAccessReview"),
    }
    for key, (short, namespaced, kind) in expected.items():
        assert key in rows, key
        assert (rows[key]["SHORTNAMES"], rows[key]["NAMESPACED"], rows[key]["KIND"]) == \
            (short, namespaced, kind), key
    assert len(rows) == 20, sorted(rows)
    assert kubectl("api-resources", "--categories=all", "-o", "name").split() == \
        ["services", "daemonsets.apps", "deployments.apps"]
    assert "pyxlb.io/v1alpha1" in kubectl("api-versions").split()


def test_discovery_documents_agree_in_both_forms(api, kubectl):
    core = json.loads(kubectl("get", "--raw", "/api/v1"))
    assert core["kind"] == "APIResourceList" and core["groupVersion"] == "v1"
    services = next(r for r in core["resources"] if r["name"] == "services")
    assert services == {"name": "services", "singularName": "service", "namespaced": True,
                        "kind": "Service", "shortNames": ["svc"], "categories": ["all"],
                        "verbs": ["create", "delete", "deletecollection", "get", "list",
                                  "patch", "update", "watch"]}
    status = next(r for r in core["resources"] if r["name"] == "services/status")
    assert status["verbs"] == ["get", "patch", "update"]
    groups = json.loads(kubectl("get", "--raw", "/apis"))
    names = [g["name"] for g in groups["groups"]]
    assert names[0] == "apps" and names[-1] == "pyxlb.io"
    pyxlb = json.loads(kubectl("get", "--raw", "/apis/pyxlb.io"))
    assert pyxlb["preferredVersion"]["groupVersion"] == "pyxlb.io/v1alpha1"
    # the aggregated form kubectl asks for first lists the same resources
    ctx = ssl.create_default_context(cafile=api.ca_file)
    accept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    with httpx2.Client(base_url=api.url, verify=ctx, trust_env=False,
                       headers={"Authorization": f"Bearer {api.admin_token}"}) as h:
        for path, legacy in (("/api", {"": ["v1"]}),
                             ("/apis", {g["name"]: [v["version"] for v in g["versions"]]
                                        for g in groups["groups"]})):
            resp = h.get(path, headers={"Accept": accept + ",application/json"})
            assert resp.headers["content-type"] == accept
            items = resp.json()["items"]
            assert {i["metadata"].get("name", ""): [v["version"] for v in i["versions"]]
                    for i in items} == legacy
        apps = next(i for i in h.get("/apis", headers={"Accept": accept}).json()["items"]
                    if i["metadata"]["name"] == "apps")
        plain = json.loads(kubectl("get", "--raw", "/apis/apps/v1"))["resources"]
        assert sorted(r["resource"] for r in apps["versions"][0]["resources"]) == \
            sorted(r["name"] for r in plain if "/" not in r["name"])


# -- 2: OpenAPI and validation -----------------------------------------------------------------


def test_kubectl_validates_on_the_server_through_openapi_v3(api, kubectl):
    index = json.loads(kubectl("get", "--raw", "/openapi/v3"))["paths"]
    assert {"api/v1", "apis/apps/v1", "apis/pyxlb.io/v1alpha1"} <= set(index)
    doc = json.loads(kubectl("get", "--raw", index["api/v1"]["serverRelativeURL"]))
    patch = doc["paths"]["/api/v1/namespaces/{namespace}/services/{name}"]["patch"]
    assert patch["x-kubernetes-group-version-kind"] == {"group": "", "version": "v1",
                                                        "kind": "Service"}
    assert "fieldValidation" in [p["name"] for p in patch["parameters"]]
    explained = kubectl("explain", "ippools.spec.announce")     # the CRD's own schema
    assert "KIND:       IPPool" in explained and "FIELD: announce <string>" in explained
    # plain `kubectl apply` (validation "strict") asks the server to validate, and is content
    done = kubectl.run("apply", "-f", "deploy/crds/", "-f", "deploy/examples/", "-v=6")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == [
        "customresourcedefinition.apiextensions.k8s.io/bgppeers.pyxlb.io created",
        "customresourcedefinition.apiextensions.k8s.io/ippools.pyxlb.io created",
        "ippool.pyxlb.io/default created"]
    posts = [line for line in done.stderr.splitlines() if 'verb="POST"' in line]
    assert len(posts) == 5 and all("fieldValidation=Strict" in p and 'status="201 Created"' in p
                                   for p in posts), posts
    assert "warning" not in done.stderr.lower()
    # a field the CRD does not declare is refused by the server, as strict validation does
    bad = ("apiVersion: pyxlb.io/v1alpha1\nkind: IPPool\nmetadata: {name: typo}\n"
           "spec: {addresses: [192.0.2.0/28], autoassign: true}\n")
    err = kubectl.fails("apply", "-f", "-", stdin=bad)
    assert 'strict decoding error: unknown field "spec.autoassign"' in err
    assert api.get("IPPool", "typo") is None
    assert kubectl("apply", "--validate=false", "-f", "-", stdin=bad) == \
        "ippool.pyxlb.io/typo created\n"
    # what `kubectl kustomize deploy/` renders validates and applies
    rendered = kubectl("kustomize", "deploy/")
    out = kubectl("apply", "-f", "-", stdin=rendered)
    assert "daemonset.apps/pyxlb-agent created" in out
    assert "customresourcedefinition.apiextensions.k8s.io/ippools.pyxlb.io unchanged" in out
    assert api.get("DaemonSet", "pyxlb-agent", "pyxlb-system")["spec"]["template"]["spec"]


# -- 3: chunked request bodies ----------------------------------------------------------------


def test_raw_writes_send_chunked_bodies_the_server_reads(api, kubectl):
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "raw"},
          "data": {"big": "x" * 20000}}
    out = kubectl("create", "--raw", "/api/v1/namespaces/default/configmaps", "-f", "-",
                  stdin=json.dumps(cm))
    assert json.loads(out)["metadata"]["uid"] == api.get("ConfigMap", "raw")["metadata"]["uid"]
    cm["data"] = {"small": "y"}
    kubectl("replace", "--raw", "/api/v1/namespaces/default/configmaps/raw", "-f", "-",
            stdin=json.dumps(cm))
    assert api.get("ConfigMap", "raw")["data"] == {"small": "y"}
    assert api.chunked_bodies == 2, "kubectl streams these bodies (Transfer-Encoding: chunked)"


# -- 4: client-side apply, strategic merge patch -----------------------------------------------


def test_apply_creates_then_patches_by_merge_key_keeping_what_others_wrote(api, kubectl, tmp_path):
    out = kubectl("apply", "-f", "deploy/crds/", "-f", "deploy/examples/")
    assert "service/echo created" in out and "deployment.apps/echo created" in out
    svc = api.get("Service", "echo")
    applied = json.loads(svc["metadata"]["annotations"][
        "kubectl.kubernetes.io/last-applied-configuration"])
    assert applied["spec"]["ports"] == [{"name": "http", "port": 80, "protocol": "TCP",
                                         "targetPort": "http"}]
    assert kubectl("apply", "-f", "deploy/examples/").split("\n")[:3] == [
        "ippool.pyxlb.io/default unchanged", "service/echo unchanged",
        "deployment.apps/echo unchanged"]
    node_port = svc["spec"]["ports"][0]["nodePort"]

    # someone else (a controller, another user) writes the Service too
    api.patch("Service", "echo", {"metadata": {"annotations": {"team": "web"}}})
    two = example_service(ports=[{"name": "http", "port": 80, "targetPort": "http"},
                                 {"name": "https", "port": 443, "targetPort": 8443}])
    path = tmp_path / "svc.yaml"
    path.write_text(yaml.safe_dump(two))
    assert kubectl("apply", "-f", str(path)) == "service/echo configured\n"
    # only port 80's target changes: the patch names that port alone, and 443 stays
    two["spec"]["ports"][0]["targetPort"] = 8080
    path.write_text(yaml.safe_dump(two))
    assert kubectl("apply", "-f", str(path)) == "service/echo configured\n"
    svc = api.get("Service", "echo")
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == \
        [(80, 8080), (443, 8443)]
    assert svc["spec"]["ports"][0]["nodePort"] == node_port
    assert svc["metadata"]["annotations"]["team"] == "web", "kept: kubectl never applied it"

    # strategic merge patches kubectl sends for other commands
    kubectl("set", "image", "deployment/echo",
            "netexec=registry.k8s.io/e2e-test-images/agnhost:2.54")
    container = api.get("Deployment", "echo")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].endswith("agnhost:2.54") and container["args"][0] == "netexec"
    kubectl("patch", "svc", "echo", "-p",
            '{"spec":{"ports":[{"port":8443,"name":"alt","targetPort":8443}]}}')
    assert [p["port"] for p in api.get("Service", "echo")["spec"]["ports"]] == [80, 443, 8443]
    kubectl("patch", "svc", "echo", "-p", '{"spec":{"ports":[{"port":443,"$patch":"delete"}]}}')
    assert [p["port"] for p in api.get("Service", "echo")["spec"]["ports"]] == [80, 8443]
    kubectl("patch", "svc", "echo", "-p", '{"metadata":{"finalizers":["a.example/x"]}}')
    kubectl("patch", "svc", "echo", "-p", '{"metadata":{"finalizers":["a.example/y"]}}')
    assert api.get("Service", "echo")["metadata"]["finalizers"] == ["a.example/x", "a.example/y"]
    kubectl("patch", "svc", "echo", "-p",
            '{"metadata":{"$deleteFromPrimitiveList/finalizers":["a.example/x","a.example/y"]}}')
    assert "finalizers" not in api.get("Service", "echo")["metadata"] or \
        api.get("Service", "echo")["metadata"]["finalizers"] == []
    kubectl("patch", "svc", "echo", "--type=merge", "-p",
            '{"spec":{"ports":[{"port":80,"name":"http","targetPort":"http"}]}}')
    assert [p["port"] for p in api.get("Service", "echo")["spec"]["ports"]] == [80]
    # custom resources take no strategic merge patch, as on a real server
    err = kubectl.fails("patch", "ippool", "default", "--type=strategic", "-p",
                        '{"spec":{"autoAssign":false}}')
    assert "UnsupportedMediaType" in err or "unknown format" in err
    kubectl("patch", "ipp", "default", "--type=merge", "-p", '{"spec":{"autoAssign":false}}')
    assert api.get("IPPool", "default")["spec"]["autoAssign"] is False
    kubectl("label", "svc", "echo", "tier=web")
    assert api.get("Service", "echo")["metadata"]["labels"]["tier"] == "web"


def test_strategic_merge_patch_directives_kubectl_sends(api, kubectl, tmp_path):
    docs = list(yaml.safe_load_all((DEPLOY / "examples" / "service.yaml").read_text()))
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    deploy["spec"]["strategy"] = {"type": "RollingUpdate",
                                  "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(deploy))
    kubectl("apply", "-f", str(path))
    # Recreate has no rollingUpdate: kubectl sends $retainKeys; env B goes, C comes before A
    deploy["spec"]["strategy"] = {"type": "Recreate"}
    container["env"] = [{"name": "C", "value": "3"}, {"name": "A", "value": "1"}]
    path.write_text(yaml.safe_dump(deploy))
    assert kubectl("apply", "-f", str(path)) == "deployment.apps/echo configured\n"
    live = api.get("Deployment", "echo")["spec"]
    assert live["strategy"] == {"type": "Recreate"}
    assert live["template"]["spec"]["containers"][0]["env"] == \
        [{"name": "C", "value": "3"}, {"name": "A", "value": "1"}]      # $setElementOrder
    # $patch: replace on a map, and on a list
    kubectl("patch", "deploy", "echo", "-p",
            '{"spec":{"selector":{"$patch":"replace","matchLabels":{"x":"y"}}}}')
    assert api.get("Deployment", "echo")["spec"]["selector"] == {"matchLabels": {"x": "y"}}
    kubectl("patch", "deploy", "echo", "-p", '{"spec":{"template":{"spec":{"containers":'
            '[{"$patch":"replace"},{"name":"only","image":"x"}]}}}}')
    assert api.get("Deployment", "echo")["spec"]["template"]["spec"]["containers"] == \
        [{"name": "only", "image": "x"}]
    err = kubectl.fails("patch", "deploy", "echo", "-p",
                        '{"spec":{"template":{"spec":{"containers":[{"image":"nameless"}]}}}}')
    assert "does not contain declared merge key: name" in err


def test_server_side_apply_owns_fields_by_manager(api, kubectl, tmp_path):
    kubectl("apply", "-f", "deploy/crds/")
    out = kubectl("apply", "--server-side", "-f", "deploy/examples/")
    assert out.split("\n")[:3] == ["ippool.pyxlb.io/default serverside-applied",
                                   "service/echo serverside-applied",
                                   "deployment.apps/echo serverside-applied"]
    svc = api.get("Service", "echo")
    managers = [(m["manager"], m["operation"]) for m in svc["metadata"]["managedFields"]]
    assert managers == [("kubectl", "Apply")]
    assert "k:{\"port\":80}" in svc["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"]["f:ports"]
    assert svc["spec"]["clusterIP"], "created and admitted like any Service"
    api.patch("Service", "echo", {"metadata": {"labels": {"team": "web"}}})

    # the manager drops a label and a port it applied before: they go, the other label stays
    svc_doc = example_service(ports=[{"name": "https", "port": 443, "targetPort": 8443}])
    del svc_doc["metadata"]["labels"]
    path = tmp_path / "svc.yaml"
    path.write_text(yaml.safe_dump(svc_doc))
    assert kubectl("apply", "--server-side", "-f", str(path)) == "service/echo serverside-applied\n"
    svc = api.get("Service", "echo")
    assert [p["port"] for p in svc["spec"]["ports"]] == [443]
    assert svc["metadata"]["labels"] == {"team": "web"}

    # another manager may not change what kubectl applied, unless it forces
    svc_doc["spec"]["externalTrafficPolicy"] = "Cluster"
    path.write_text(yaml.safe_dump(svc_doc))
    err = kubectl.fails("apply", "--server-side", "--field-manager=ops", "-f", str(path))
    assert "conflict" in err and ".spec.externalTrafficPolicy" in err
    assert api.get("Service", "echo")["spec"]["externalTrafficPolicy"] == "Local"
    kubectl("apply", "--server-side", "--field-manager=ops", "--force-conflicts", "-f", str(path))
    svc = api.get("Service", "echo")
    assert svc["spec"]["externalTrafficPolicy"] == "Cluster"
    owners = {m["manager"] for m in svc["metadata"]["managedFields"]
              if "f:externalTrafficPolicy" in m["fieldsV1"].get("f:spec", {})}
    assert owners == {"ops"}


# -- 5: tables ---------------------------------------------------------------------------------


def test_get_prints_the_servers_columns(api, kubectl):
    kubectl("apply", "-k", "deploy/")
    kubectl("apply", "-f", "deploy/examples/")
    api.create(o.node("n1", ["10.0.0.1"], labels={"node-role.kubernetes.io/control-plane": ""}))
    api.create(o.endpoint_slice("echo", [o.endpoint("10.1.0.1", "n1"),
                                         o.endpoint("10.1.0.2", "n1")], ports=((8080, "TCP"),)))
    api.create(o.service("plain", "default", type_="ClusterIP", lb_class=None))

    rows = table(kubectl("get", "svc", "-A"))
    assert header(kubectl("get", "svc", "-A")) == \
        ["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    echo = next(r for r in rows if r["NAME"] == "echo")
    svc = api.get("Service", "echo")
    assert (echo["NAMESPACE"], echo["TYPE"], echo["CLUSTER-IP"], echo["EXTERNAL-IP"]) == \
        ("default", "LoadBalancer", svc["spec"]["clusterIPs"][0], "<pending>")
    assert echo["PORT(S)"] == f"80:{svc['spec']['ports'][0]['nodePort']}/TCP"
    assert re.fullmatch(r"\d+s", echo["AGE"])
    plain = next(r for r in rows if r["NAME"] == "plain")
    assert (plain["TYPE"], plain["EXTERNAL-IP"]) == ("ClusterIP", "<none>")
    api.patch("Service", "echo", {"status": {"loadBalancer": {"ingress": [
        {"ip": "192.0.2.1"}, {"ip": "2001:db8:100::1"}]}}})
    wide = table(kubectl("get", "svc", "echo", "-o", "wide"))
    assert (wide[0]["EXTERNAL-IP"], wide[0]["SELECTOR"]) == \
        ("192.0.2.1,2001:db8:100::1", "app.kubernetes.io/name=echo")

    node = table(kubectl("get", "nodes"))
    assert header(kubectl("get", "no")) == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert (node[0]["NAME"], node[0]["STATUS"], node[0]["ROLES"]) == ("n1", "Ready",
                                                                      "control-plane")
    assert table(kubectl("get", "no", "-o", "wide"))[0]["INTERNAL-IP"] == "10.0.0.1"
    ns = {r["NAME"]: r["STATUS"] for r in table(kubectl("get", "ns"))}
    assert ns["pyxlb-system"] == "Active" and "kube-system" in ns
    slices = table(kubectl("get", "endpointslices"))
    assert (slices[0]["ADDRESSTYPE"], slices[0]["PORTS"], slices[0]["ENDPOINTS"]) == \
        ("IPv4", "8080", "10.1.0.1,10.1.0.2")
    assert header(kubectl("get", "cm", "-n", "pyxlb-system")) == ["NAME", "DATA", "AGE"]
    cm = api.get("ConfigMap", "pyxlb-config", "pyxlb-system")
    assert table(kubectl("get", "cm", "-n", "pyxlb-system"))[0]["DATA"] == str(len(cm["data"]))
    assert table(kubectl("get", "sa", "-n", "pyxlb-system"))[0]["SECRETS"] == "0"
    api.create({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "pyxlb-controller", "namespace": "pyxlb-system"},
                "spec": {"holderIdentity": "n1"}})
    assert table(kubectl("get", "leases", "-A"))[0]["HOLDER"] == "n1"
    ds = table(kubectl("get", "ds", "-n", "pyxlb-system", "-o", "wide"))[0]
    template = api.get("DaemonSet", "pyxlb-agent", "pyxlb-system")["spec"]["template"]
    selector = template["spec"].get("nodeSelector") or {}
    assert (ds["NAME"], ds["DESIRED"], ds["READY"], ds["IMAGES"]) == \
        ("pyxlb-agent", "0", "0", template["spec"]["containers"][0]["image"])
    assert ds["NODE SELECTOR"] == (",".join(f"{k}={v}" for k, v in sorted(selector.items()))
                                   or "<none>")
    deploy = table(kubectl("get", "deploy", "-o", "wide"))[0]
    assert (deploy["READY"], deploy["CONTAINERS"], deploy["SELECTOR"]) == \
        ("0/2", "netexec", "app.kubernetes.io/name=echo")
    pool = table(kubectl("get", "ippools"))[0]
    assert header(kubectl("get", "ipp")) == ["NAME", "ADDRESSES", "ANNOUNCE", "AUTO ASSIGN",
                                             "AGE"]
    # the example pool says no announce: the CRD's default, as a real server fills it in
    assert (pool["NAME"], pool["ADDRESSES"], pool["ANNOUNCE"], pool["AUTO ASSIGN"]) == (
        "default", '["192.0.2.0/28","198.51.100.10-198.51.100.20","2001:db8:100::/120"]',
        "l2", "true")
    assert "announce" not in yaml.safe_load((DEPLOY / "examples" / "ippool.yaml").read_text())[
        "spec"]
    assert header(kubectl("get", "clusterroles")) == ["NAME", "CREATED AT"]
    assert table(kubectl("get", "clusterrolebindings"))[0]["ROLE"] == "ClusterRole/pyxlb-agent"
    sections = kubectl("get", "all").strip().split("\n\n")       # one table per kind
    assert [sorted(r["NAME"] for r in table(t)) for t in sections] == \
        [["service/echo", "service/plain"], ["deployment.apps/echo"]]


def test_get_watch_prints_rows_as_objects_change(api, kubectl):
    api.create(o.service("web", "default", type_="ClusterIP", lb_class=None))
    proc = subprocess.Popen([KUBECTL, "get", "svc", "--watch", "--request-timeout=20s"],
                            env=kubectl.env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: List[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        eventually(lambda: len(lines) >= 2, what="the header and the first row")
        api.create(o.service("late", "default", type_="ClusterIP", lb_class=None))
        eventually(lambda: any(line.startswith("late ") for line in lines), what="a new row")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        reader.join(timeout=10)
    assert lines[0].split()[:2] == ["NAME", "TYPE"] and lines[1].startswith("web ")
    assert sum(1 for line in lines if line.startswith("NAME")) == 1, "one header"


# -- 6: describe: the controller's address and Events ------------------------------------------


def test_describe_service_shows_the_controllers_ingress_and_events(api, kubectl, tmp_path,
                                                                  no_proxy):
    kubectl("apply", "-k", "deploy/")
    kubectl("apply", "-f", "deploy/examples/")
    # pyxlb's IP controller, with the agent's ServiceAccount from deploy/rbac.yaml
    agent_config = api.write_kubeconfig(tmp_path / "agent.conf", service_account=AGENT)
    controller = Controller(lambda: kube.connect(kubeconfig=agent_config),
                            lambda: {kube.key_of(s): s for s in api.list("Service")},
                            tr.Settings(node_name="n1"), identity="n1", lease_duration=1.0,
                            watch_timeout=5).start()
    try:
        controller.service_changed("default/echo", None, api.get("Service", "echo"))
        ingress = eventually(lambda: (api.get("Service", "echo")["status"]["loadBalancer"]
                                      .get("ingress")), what="an address for echo")
        eventually(lambda: any(e["reason"] == "IPAllocated" for e in api.list("Event")),
                   what="the IPAllocated Event")
    finally:
        controller.stop()
    ips = [i["ip"] for i in ingress]
    svc = api.get("Service", "echo")
    # Events that are not about this Service: another namespace, an earlier Service "echo"
    api.create(o.namespace("other"))
    for ns, uid, reason in (("other", svc["metadata"]["uid"], "ElsewhereEvent"),
                            ("default", "0000-gone", "EarlierEvent")):
        api.create({"apiVersion": "v1", "kind": "Event",
                    "metadata": {"name": f"echo.{reason.lower()}", "namespace": ns},
                    "involvedObject": {"apiVersion": "v1", "kind": "Service", "name": "echo",
                                       "namespace": ns, "uid": uid},
                    "reason": reason, "message": "not this one", "type": "Normal",
                    "source": {"component": "someone"}})

    out = kubectl("describe", "svc", "echo")
    ingress_line = next(line for line in out.splitlines()
                        if line.startswith("LoadBalancer Ingress:"))
    assert [ip.split()[0] for ip in ingress_line.split(":", 1)[1].split(", ")] == ips
    events = out[out.index("Events:"):]
    assert "IPAllocated" in events and COMPONENT in events
    assert "ElsewhereEvent" not in events and "EarlierEvent" not in events
    assert table(kubectl("get", "svc", "echo"))[0]["EXTERNAL-IP"] == ",".join(sorted(ips))

    # -- 7: get events (core v1, the API pyxlb writes to)
    rows = table(kubectl("get", "events", "-A"))
    assert header(kubectl("get", "events", "-A")) == \
        ["NAMESPACE", "LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    mine = next(r for r in rows if r["REASON"] == "IPAllocated")
    assert (mine["NAMESPACE"], mine["TYPE"], mine["OBJECT"]) == ("default", "Normal",
                                                                 "service/echo")
    assert ips[0] in mine["MESSAGE"]
    selected = table(kubectl("get", "events", "-A", "--field-selector",
                             "involvedObject.kind=Service,reason=IPAllocated"))
    assert [r["REASON"] for r in selected] == ["IPAllocated"]
    assert "field label not supported" in kubectl.fails("get", "events",
                                                        "--field-selector", "spec.x=1")


# -- 7: everyday commands ----------------------------------------------------------------------


def test_install_apply_delete_and_kustomize(api, kubectl):
    out = kubectl("apply", "-k", "deploy/")
    for line in ("namespace/pyxlb-system created",
                 "customresourcedefinition.apiextensions.k8s.io/ippools.pyxlb.io created",
                 "clusterrolebinding.rbac.authorization.k8s.io/pyxlb-agent created",
                 "configmap/pyxlb-config created", "daemonset.apps/pyxlb-agent created"):
        assert line in out
    assert kubectl("wait", "--for", "condition=established", "--timeout=10s",
                   "crd/ippools.pyxlb.io", "crd/bgppeers.pyxlb.io").count("condition met") == 2
    again = kubectl("apply", "-f", "-", stdin=kubectl("kustomize", "deploy/"))
    assert again.count("unchanged") == 10 and "configured" not in again
    assert api.get("DaemonSet", "pyxlb-agent", "pyxlb-system")["metadata"]["labels"][
        "app.kubernetes.io/name"] == "pyxlb"

    # server-side dry runs store nothing; kubectl diff is one
    out = kubectl("apply", "--dry-run=server", "-f", "deploy/examples/")
    assert out.count("created (server dry run)") == 3 and api.list("IPPool") == []
    kubectl("apply", "-f", "deploy/examples/")
    assert {r["NAME"] for r in table(kubectl("get", "ipp"))} == {"default"}
    assert kubectl.run("diff", "-f", "deploy/examples/").returncode == 0
    changed = (DEPLOY / "examples" / "service.yaml").read_text().replace("port: 80", "port: 81")
    done = kubectl.run("diff", "-f", "-", stdin=changed)
    assert done.returncode == 1 and "-    port: 80\n" in done.stdout and \
        "+    port: 81\n" in done.stdout
    assert kubectl("delete", "ipp", "default", "--dry-run=server") == \
        'ippool.pyxlb.io "default" deleted (server dry run)\n'
    assert api.get("Service", "echo")["spec"]["ports"][0]["port"] == 80 and \
        api.get("IPPool", "default") is not None
    assert kubectl("delete", "svc", "echo") == 'service "echo" deleted\n'
    assert api.get("Service", "echo") is None
    assert "NotFound" in kubectl.fails("get", "svc", "echo")
    out = kubectl("delete", "-f", "deploy/examples/", "--ignore-not-found")
    assert 'ippool.pyxlb.io "default" deleted' in out and \
        'deployment.apps "echo" deleted' in out
    assert api.list("IPPool") == [] and api.list("Deployment") == []
    kubectl("apply", "-f", "deploy/examples/")
    kubectl("delete", "ns", "pyxlb-system")
    assert api.get("Namespace", "pyxlb-system") is None and \
        api.list("ConfigMap", "pyxlb-system") == []


def test_delete_f_takes_a_namespace_and_what_it_holds(tmp_path):
    """docs/lab/k8s-web.yaml holds a Namespace and a Service and an EndpointSlice in it. On a
    real cluster `kubectl delete -f` of it deletes all three: the Namespace is only marked
    Terminating, its content is still there for the next two deletes, and kubectl waits
    until the namespace controller has removed the lot. (kubectl sends its deletes one after
    another; a controller faster than that would make them NotFound, on a cluster too, so
    this stand-in's controller waits two seconds.)"""
    with ApiStandIn(tls=True, authorization="RBAC", namespace_delay=2.0) as api:
        kubectl = Kubectl(api, tmp_path / "admin")
        assert kubectl("apply", "-f", "docs/lab/k8s-web.yaml").splitlines() == [
            "namespace/shop created", "service/web created",
            "endpointslice.discovery.k8s.io/web-ipv4 created"]
        started = time.monotonic()
        out = kubectl("delete", "-f", "docs/lab/k8s-web.yaml")
        assert out.splitlines() == ['namespace "shop" deleted', 'service "web" deleted',
                                    'endpointslice.discovery.k8s.io "web-ipv4" deleted']
        assert time.monotonic() - started >= api.namespace_delay, "it waited for the controller"
        assert api.get("Namespace", "shop") is None and api.list("Service", "shop") == [] \
            and api.list("EndpointSlice", "shop") == []
        deletes = [(a.resource, a.name, a.code) for a in api.audit if a.verb == "delete"]
        assert deletes == [("namespaces", "shop", 200), ("services", "web", 200),
                           ("endpointslices", "web-ipv4", 200)]
        assert "NotFound" in kubectl.fails("get", "ns", "shop")


def test_auth_can_i_answers_as_rbac_does(api, kubectl, tmp_path):
    assert kubectl("auth", "can-i", "delete", "nodes", "-A") == "yes\n"
    kubectl("apply", "-f", "deploy/namespace.yaml", "-f", "deploy/rbac.yaml")
    as_agent = ("--as", "system:serviceaccount:pyxlb-system:pyxlb-agent")
    assert kubectl("auth", "can-i", "watch", "services", "-A", *as_agent) == "yes\n"
    assert kubectl("auth", "can-i", "patch", "services", "--subresource=status",
                   *as_agent) == "yes\n"
    done = kubectl.run("auth", "can-i", "delete", "nodes", "-A", *as_agent)
    assert (done.returncode, done.stdout) == (1, "no\n")
    agent = Kubectl(api, tmp_path / "agent", service_account=AGENT)
    assert agent("auth", "can-i", "update", "leases/pyxlb-controller",
                 "-n", "pyxlb-system") == "yes\n"
    done = agent.run("auth", "can-i", "update", "leases/other", "-n", "pyxlb-system")
    assert (done.returncode, done.stdout) == (1, "no\n"), "resourceNames narrow the rule"
    done = agent.run("auth", "can-i", "create", "daemonsets", "-n", "pyxlb-system")
    assert (done.returncode, done.stdout) == (1, "no\n")
    assert "No resources found" in agent.run("get", "svc", "-A").stderr
    err = agent.fails("get", "ds", "-n", "pyxlb-system")
    assert 'cannot list resource "daemonsets" in API group "apps"' in err
    err = agent.fails("get", "svc", "--as", "someone")
    assert 'cannot impersonate resource "users"' in err


# -- 9: kubectl create: the typed shortcuts send protobuf ------------------------------------


def port_of(api: ApiStandIn, name: str) -> int:
    return api.get("Service", name)["spec"]["ports"][0]["nodePort"]


def test_create_service_shortcuts_make_services_pyxlb_gives_addresses(api, kubectl, tmp_path,
                                                                       no_proxy):
    assert kubectl("create", "service", "loadbalancer", "web", "--tcp=80:8080") == \
        "service/web created\n"
    spec = api.get("Service", "web")["spec"]
    assert (spec["type"], spec["selector"]) == ("LoadBalancer", {"app": "web"})
    [port] = spec["ports"]
    assert {k: port[k] for k in ("name", "protocol", "port", "targetPort")} == \
        {"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080}
    assert 30000 <= port["nodePort"] <= 32767 and spec["clusterIP"] == spec["clusterIPs"][0]
    assert "loadBalancerClass" not in spec, "class-less: pyxlb takes it (default_class)"
    assert kubectl("create", "service", "nodeport", "np", "--tcp=443:https",
                   "--node-port=30443") == "service/np created\n"
    [port] = api.get("Service", "np")["spec"]["ports"]
    assert (port["port"], port["targetPort"], port["nodePort"]) == (443, "https", 30443)
    kubectl("create", "service", "clusterip", "db", "--clusterip=None")
    kubectl("create", "service", "clusterip", "cache", "--tcp=6379")
    assert api.get("Service", "db")["spec"]["clusterIP"] == "None"
    spec = api.get("Service", "cache")["spec"]
    assert spec["type"] == "ClusterIP" and "nodePort" not in spec["ports"][0]
    assert 'services "web" already exists' in kubectl.fails(
        "create", "service", "loadbalancer", "web", "--tcp=80:8080")
    assert kubectl("create", "service", "loadbalancer", "dry", "--tcp=80",
                   "--dry-run=server") == "service/dry created (server dry run)\n"
    assert api.get("Service", "dry") is None

    # pyxlb's IP controller, as the agent's ServiceAccount, gives the LoadBalancer an address
    kubectl("apply", "-f", "deploy/namespace.yaml", "-f", "deploy/rbac.yaml",
            "-f", "deploy/examples/ippool.yaml")
    agent_config = api.write_kubeconfig(tmp_path / "agent.conf", service_account=AGENT)
    controller = Controller(lambda: kube.connect(kubeconfig=agent_config),
                            lambda: {kube.key_of(s): s for s in api.list("Service")},
                            tr.Settings(node_name="n1"), identity="n1", lease_duration=1.0,
                            watch_timeout=5).start()
    try:
        controller.service_changed("default/web", None, api.get("Service", "web"))
        ingress = eventually(lambda: (api.get("Service", "web")["status"]["loadBalancer"]
                                      .get("ingress")), what="an address for web")
    finally:
        controller.stop()
    row = table(kubectl("get", "svc", "web"))[0]
    assert row["EXTERNAL-IP"] == ",".join(i["ip"] for i in ingress)
    assert row["EXTERNAL-IP"].startswith("192.0.2."), "from deploy/examples/ippool.yaml"
    assert row["PORT(S)"] == f"80:{port_of(api, 'web')}/TCP"


def test_create_shortcuts_store_namespaces_configmaps_and_deployments(api, kubectl, tmp_path):
    assert kubectl("create", "namespace", "shop") == "namespace/shop created\n"
    ns = api.get("Namespace", "shop")
    assert ns["status"]["phase"] == "Active" and \
        ns["metadata"]["labels"]["kubernetes.io/metadata.name"] == "shop"
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"\x00\xffpyxlb")     # not UTF-8: kubectl puts it in binaryData
    kubectl("create", "configmap", "conf", "-n", "shop", "--from-literal=mode=fast",
            f"--from-file={blob}")
    cm = api.get("ConfigMap", "conf", "shop")
    assert cm["data"] == {"mode": "fast"}
    assert {k: base64.b64decode(v) for k, v in cm["binaryData"].items()} == \
        {"blob.bin": b"\x00\xffpyxlb"}
    assert kubectl("create", "serviceaccount", "robot", "-n", "shop") == \
        "serviceaccount/robot created\n"
    assert api.get("ServiceAccount", "robot", "shop")["metadata"]["uid"]

    kubectl("create", "deployment", "web", "-n", "shop", "--image=nginx:1", "--port=8080",
            "--replicas=2")
    deploy = api.get("Deployment", "web", "shop")
    assert deploy["metadata"]["labels"] == {"app": "web"} and deploy["metadata"]["generation"] == 1
    assert deploy["spec"]["selector"] == {"matchLabels": {"app": "web"}}
    assert deploy["spec"]["replicas"] == 2
    assert deploy["spec"]["template"]["spec"]["containers"] == [
        {"name": "nginx", "image": "nginx:1", "ports": [{"containerPort": 8080}],
         "resources": {}}]
    kubectl("create", "deployment", "idle", "-n", "shop", "--image=busybox:1", "--replicas=0",
            "--", "sleep", "3600")
    idle = api.get("Deployment", "idle", "shop")["spec"]
    assert idle["replicas"] == 0, "a pointer set to zero is kept"
    assert idle["template"]["spec"]["containers"][0]["command"] == ["sleep", "3600"]
    assert kubectl("get", "deploy", "web", "-n", "shop", "-o",
                   "jsonpath={.spec.template.spec.containers[0].image}") == "nginx:1"
    assert 'namespaces "nowhere" not found' in kubectl.fails(
        "create", "configmap", "x", "-n", "nowhere", "--from-literal=a=b")


def test_create_rbac_shortcuts_take_effect(api, kubectl, tmp_path):
    kubectl("create", "serviceaccount", "robot")
    robot = Kubectl(api, tmp_path / "robot", service_account=("default", "robot"))
    assert robot.run("auth", "can-i", "list", "services").stdout == "no\n"
    assert 'cannot list resource "services"' in robot.fails("get", "svc")

    kubectl("create", "role", "svc-reader", "--verb=get,list,watch", "--resource=services")
    assert api.get("Role", "svc-reader", "default")["rules"] == [
        {"verbs": ["get", "list", "watch"], "apiGroups": [""], "resources": ["services"]}]
    assert kubectl("create", "rolebinding", "robot-reads", "--role=svc-reader",
                   "--serviceaccount=default:robot") == \
        "rolebinding.rbac.authorization.k8s.io/robot-reads created\n"
    binding = api.get("RoleBinding", "robot-reads", "default")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "robot",
                                    "namespace": "default"}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "svc-reader"}
    assert robot("auth", "can-i", "list", "services") == "yes\n"
    assert robot.run("get", "svc").returncode == 0
    assert robot.run("auth", "can-i", "list", "services", "-n", "kube-system").stdout == "no\n"

    kubectl("create", "clusterrole", "node-reader", "--verb=get,list", "--resource=nodes")
    kubectl("create", "clusterrolebinding", "robot-nodes", "--clusterrole=node-reader",
            "--serviceaccount=default:robot")
    assert robot("auth", "can-i", "list", "nodes", "-A") == "yes\n"
    assert robot.run("auth", "can-i", "delete", "nodes", "-A").stdout == "no\n"

    # resourceNames, users, non-resource URLs
    kubectl("create", "role", "one-lease", "--verb=update",
            "--resource=leases.coordination.k8s.io", "--resource-name=pyxlb-controller")
    kubectl("create", "rolebinding", "bob-lease", "--role=one-lease", "--user=bob")
    assert kubectl("auth", "can-i", "update", "leases/pyxlb-controller", "--as=bob") == "yes\n"
    assert kubectl.run("auth", "can-i", "update", "leases/other", "--as=bob").stdout == "no\n"
    kubectl("create", "clusterrole", "metrics-reader", "--verb=get", "--non-resource-url=/metrics")
    assert api.get("ClusterRole", "metrics-reader")["rules"] == [
        {"verbs": ["get"], "nonResourceURLs": ["/metrics"]}]
    kubectl("create", "clusterrolebinding", "bob-metrics", "--clusterrole=metrics-reader",
            "--user=bob")
    assert kubectl("auth", "can-i", "get", "/metrics", "--as=bob") == "yes\n"
    assert kubectl.run("auth", "can-i", "get", "/debug", "--as=bob").stdout == "no\n"

    kubectl("delete", "rolebinding", "robot-reads")
    assert robot.run("auth", "can-i", "list", "services").stdout == "no\n"


def test_create_token_issues_a_token_of_the_service_account(api, kubectl):
    kubectl("create", "serviceaccount", "robot")
    token = kubectl("create", "token", "robot").strip()
    who = json.loads(kubectl("auth", "whoami", "-o", "json", "--token", token))
    assert who["status"]["userInfo"]["username"] == "system:serviceaccount:default:robot"
    asked = time.time()
    request = json.loads(kubectl("create", "token", "robot", "--duration=2h",
                                 "--audience=pyxlb", "-o", "json"))
    assert request["kind"] == "TokenRequest" and request["status"]["token"] not in ("", token)
    assert (request["spec"]["audiences"], request["spec"]["expirationSeconds"]) == \
        (["pyxlb"], 7200)
    expires = calendar.timegm(time.strptime(request["status"]["expirationTimestamp"],
                                            "%Y-%m-%dT%H:%M:%SZ"))
    assert abs(expires - (asked + 7200)) < 60

    # the token is the ServiceAccount's, RBAC and all: it may not mint tokens itself
    err = kubectl.fails("create", "token", "robot", "--token", token)
    assert 'cannot create resource "serviceaccounts/token"' in err
    assert 'serviceaccounts "ghost" not found' in kubectl.fails("create", "token", "ghost")
    kubectl("delete", "serviceaccount", "robot")     # and it dies with the ServiceAccount
    assert "Unauthorized" in kubectl.fails("auth", "whoami", "--token", token)
