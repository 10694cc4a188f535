"""The API stand-in's TLS, authentication and RBAC, driven through the real lightkube client
over real sockets: an in-cluster config, token rotation, and what deploy/rbac.yaml lets the
agent's ServiceAccount do (and the exact refusals a real kube-apiserver gives it)."""

import http.client
import json
import os
import socket
import ssl
import stat
from pathlib import Path

import httpx2
import lightkube
import pytest
import yaml
from lightkube import ApiError
from lightkube.config.models import Cluster, User
from lightkube.generic_resource import create_global_resource
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.core_v1 import ServicePort, ServiceSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import ConfigMap, Node, Secret, Service
from lightkube.resources.discovery_v1 import EndpointSlice

from tests.support import standin_auth as auth
from tests.support.standin import ApiStandIn, StandInError
from tests.support.standin_auth import RequestAttributes, authorize, request_attributes

ROOT = Path(__file__).resolve().parents[2]
RBAC_YAML = ROOT / "deploy" / "rbac.yaml"
NAMESPACE_YAML = ROOT / "deploy" / "namespace.yaml"

NS = "pyxlb-system"
SA = "pyxlb-agent"
AGENT = f"system:serviceaccount:{NS}:{SA}"
AGENT_GROUPS = ("system:serviceaccounts", f"system:serviceaccounts:{NS}", "system:authenticated")
LEASE = "pyxlb-controller"

IPPool = create_global_resource("pyxlb.io", "v1alpha1", "IPPool", "ippools")
BGPPeer = create_global_resource("pyxlb.io", "v1alpha1", "BGPPeer", "bgppeers")


# -- helpers ------------------------------------------------------------------------------


def service(name, namespace="default"):
    return Service(metadata=ObjectMeta(name=name, namespace=namespace),
                   spec=ServiceSpec(type="LoadBalancer", ports=[ServicePort(port=80)]))


def lease(name, namespace=NS):
    return Lease(metadata=ObjectMeta(name=name, namespace=namespace),
                 spec=LeaseSpec(holderIdentity="node-a", leaseDurationSeconds=15))


def configmap(name, namespace):
    return ConfigMap(metadata=ObjectMeta(name=name, namespace=namespace), data={"k": "v"})


def refused(call, *args, **kwargs):
    """The Status of the ApiError `call` raises."""
    with pytest.raises(ApiError) as err:
        result = call(*args, **kwargs)
        if hasattr(result, "__iter__") and not hasattr(result, "metadata"):
            list(result)    # list is lazy: the request goes out when it is iterated
    return err.value.status


def assert_forbidden(status, message, name=None, group=None, kind=None):
    assert (status.code, status.reason, status.status) == (403, "Forbidden", "Failure")
    assert status.message == message
    assert (status.details.name, status.details.group, status.details.kind) == (name, group, kind)


def agent_says(what):
    return f'User "{AGENT}" cannot {what}'


@pytest.fixture
def tls_api():
    with ApiStandIn(tls=True) as api:
        yield api


@pytest.fixture
def rbac_api():
    """TLS and RBAC, with deploy/namespace.yaml and deploy/rbac.yaml applied."""
    with ApiStandIn(tls=True, authorization="RBAC") as api:
        assert api.apply_manifests(NAMESPACE_YAML) == []
        assert api.apply_manifests(RBAC_YAML) == []
        for ns in ("shop", "team-a", "team-b"):     # the namespaces the tests write in
            if api.get("Namespace", ns) is None:
                api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        yield api


@pytest.fixture
def agent(rbac_api):
    """A client holding the agent ServiceAccount's token."""
    return rbac_api.client_for(rbac_api.issue_token(NS, SA))


@pytest.fixture
def in_cluster(rbac_api, tmp_path, monkeypatch):
    """make() -> a lightkube Client built as in a pod: KubeConfig.from_service_account on a
    directory written like the kubelet's mount, KUBERNETES_SERVICE_HOST/PORT set."""
    clients = []
    for key, value in rbac_api.service_env().items():
        monkeypatch.setenv(key, value)

    def make(directory=None):
        directory = directory or rbac_api.write_service_account(tmp_path / "sa", NS, SA)
        config = lightkube.KubeConfig.from_service_account(directory)
        client = lightkube.Client(config=config, trust_env=False)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def handshake(api, server_hostname, cafile=None):
    """A bare TLS handshake to the stand-in, verifying `server_hostname` against its cert."""
    ctx = ssl.create_default_context(cafile=cafile or api.ca_file)
    with socket.create_connection((api.host, api.port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
            return tls.getpeercert()


# -- TLS ----------------------------------------------------------------------------------


def test_tls_serves_with_the_ca_and_is_refused_without_it(tls_api):
    assert tls_api.url.startswith("https://127.0.0.1:")
    assert tls_api.ca_pem.startswith(b"-----BEGIN CERTIFICATE-----")
    assert Path(tls_api.ca_file).read_bytes() == tls_api.ca_pem
    c = tls_api.client()
    c.create(service("web"))
    assert [s.metadata.name for s in c.list(Service)] == ["web"]

    # a client trusting only the system CAs fails verification, and the server lives on
    config = lightkube.KubeConfig.from_one(cluster=Cluster(server=tls_api.url), user=User())
    stranger = lightkube.Client(config=config, trust_env=False)
    try:
        with pytest.raises(httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            list(stranger.list(Service))
    finally:
        stranger.close()
    # plain http to the TLS port: a failed handshake on that connection only
    with socket.create_connection((tls_api.host, tls_api.port), timeout=5) as raw:
        raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            assert not raw.recv(1024).startswith(b"HTTP/1.1 200")
        except ConnectionResetError:
            pass
    assert c.get(Service, "web").metadata.name == "web"


def test_tls_certificate_names_the_api_server(tls_api):
    for name in ("kubernetes", "kubernetes.default", "kubernetes.default.svc",
                 "kubernetes.default.svc.cluster.local", "localhost", "127.0.0.1"):
        cert = handshake(tls_api, name)
    sans = cert["subjectAltName"]
    assert ("IP Address", "127.0.0.1") in sans and ("IP Address", "0:0:0:0:0:0:0:1") in sans
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(tls_api, "example.com")

    from cryptography import x509
    ca = x509.load_pem_x509_certificate(tls_api.ca_pem)
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert 86400 <= lifetime.total_seconds() <= 86400 + 600

    # stop() removes the CA's temporary directory
    ca_dir = Path(tls_api.ca_file).parent
    tls_api.stop()
    assert not ca_dir.exists()


def test_tls_on_ipv6_loopback():
    api = ApiStandIn(host="::1", tls=True).start()     # (the lab tests need IPv6 too)
    try:
        assert api.url.startswith("https://[::1]:")
        assert list(api.client().list(Service)) == []
        handshake(api, "::1")
    finally:
        api.stop()


# -- authentication -----------------------------------------------------------------------


def test_in_cluster_config_lists_services(rbac_api, in_cluster, tmp_path):
    rbac_api.create(service("web", "shop").to_dict())
    client = in_cluster()
    assert [(s.metadata.namespace, s.metadata.name)
            for s in client.list(Service, namespace="*")] == [("shop", "web")]
    assert client.namespace == NS

    sa = tmp_path / "sa"
    assert (sa / "namespace").read_text() == NS
    assert (sa / "ca.crt").read_bytes() == rbac_api.ca_pem
    assert stat.S_IMODE(os.stat(sa / "token").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(sa / "ca.crt").st_mode) == 0o644
    record = rbac_api.audit[-1]
    assert (record.user, record.groups, record.verb, record.namespace, record.allowed,
            record.code) == (AGENT, AGENT_GROUPS, "list", "", True, 200)


def test_unknown_and_revoked_tokens_get_401(rbac_api):
    ctx = ssl.create_default_context(cafile=rbac_api.ca_file)
    expected = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "Unauthorized", "reason": "Unauthorized", "code": 401}
    with httpx2.Client(base_url=rbac_api.url, verify=ctx, trust_env=False) as raw:
        for path in ("/api/v1/services", "/healthz"):   # authentication covers every path
            r = raw.get(path, headers={"Authorization": "Bearer not-a-token"})
            assert r.status_code == 401 and r.json() == expected

    status = refused(rbac_api.client_for("not-a-token").list, Service)
    assert (status.code, status.reason, status.message) == (401, "Unauthorized", "Unauthorized")

    token = rbac_api.issue_token(NS, SA)
    client = rbac_api.client_for(token)
    assert list(client.list(Service, namespace="*")) == []
    rbac_api.revoke_token(token)
    assert refused(client.list, Service, namespace="*").code == 401
    record = rbac_api.audit[-1]
    assert (record.user, record.allowed, record.code, record.verb, record.resource) == \
        (None, False, 401, "list", "services")


def test_anonymous_requests(rbac_api):
    anonymous = rbac_api.client_for(None)
    assert_forbidden(refused(anonymous.list, Service, namespace="*"),
                     'services is forbidden: User "system:anonymous" cannot list resource '
                     '"services" in API group "" at the cluster scope', kind="services")
    assert rbac_api.audit[-1].groups == ("system:unauthenticated",)

    ctx = ssl.create_default_context(cafile=rbac_api.ca_file)
    with httpx2.Client(base_url=rbac_api.url, verify=ctx, trust_env=False) as raw:
        assert raw.get("/healthz").status_code == 200      # system:public-info-viewer
        assert raw.get("/version").status_code == 200
        r = raw.get("/apis")        # system:discovery is for authenticated users only
        assert r.status_code == 403
        assert r.json()["message"] == \
            'forbidden: User "system:anonymous" cannot get path "/apis"'
        r = raw.get("/apis", headers={"Authorization": f"Bearer {rbac_api.admin_token}"})
        assert r.status_code == 200 and r.json()["kind"] == "APIGroupList"


def test_rotation_keeps_an_in_cluster_client_working(rbac_api, in_cluster, tmp_path):
    client = in_cluster()
    assert list(client.list(Service, namespace="*")) == []
    directory = tmp_path / "sa"
    old = (directory / "token").read_text()

    new = rbac_api.rotate_service_account(directory)
    assert new != old and (directory / "token").read_text() == new
    assert stat.S_IMODE(os.stat(directory / "token").st_mode) == 0o600
    assert not [p for p in directory.iterdir() if p.name.startswith(".")], "temp file left"
    rbac_api.clear_audit()
    assert list(client.list(Service, namespace="*")) == [], "re-reads the token on 401"
    assert [(r.user, r.code) for r in rbac_api.audit] == [(None, 401), (AGENT, 200)]
    assert refused(rbac_api.client_for(old).list, Service, namespace="*").code == 401

    # without revoking, both tokens work (a kubelet overlap window)
    newer = rbac_api.rotate_service_account(directory, revoke_old=False)
    assert list(rbac_api.client_for(new).list(Service, namespace="*")) == []
    assert list(rbac_api.client_for(newer).list(Service, namespace="*")) == []


def test_tokens_die_with_their_service_account(rbac_api):
    with pytest.raises(StandInError) as err:
        rbac_api.issue_token(NS, "nobody")
    assert err.value.code == 404 and '"nobody"' in str(err.value) and NS in str(err.value)

    client = rbac_api.client_for(rbac_api.issue_token(NS, SA))
    assert list(client.list(Service, namespace="*")) == []
    sa = rbac_api.get("ServiceAccount", SA, NS)
    rbac_api.delete("ServiceAccount", SA, NS)
    assert refused(client.list, Service, namespace="*").code == 401
    # a new ServiceAccount of the same name does not revive the old token
    rbac_api.create({"apiVersion": "v1", "kind": "ServiceAccount",
                     "metadata": {"name": SA, "namespace": NS}})
    assert refused(client.list, Service, namespace="*").code == 401
    assert rbac_api.get("ServiceAccount", SA, NS)["metadata"]["uid"] != sa["metadata"]["uid"]
    fresh = rbac_api.client_for(rbac_api.issue_token(NS, SA))
    assert list(fresh.list(Service, namespace="*")) == []


# -- deploy/rbac.yaml ---------------------------------------------------------------------


def test_agent_reads_services_everywhere_and_writes_their_status(rbac_api, agent):
    admin = rbac_api.client()
    admin.create(service("web", "shop"))
    assert [s.metadata.name for s in agent.list(Service, namespace="*")] == ["web"]
    events = agent.watch(Service, namespace="*", server_timeout=5)
    etype, obj = next(events)
    events.close()
    assert (etype, obj.metadata.name) == ("ADDED", "web")
    # it reads by list and watch only: a get is refused
    status = refused(agent.get, Service, "web", namespace="shop")
    assert_forbidden(status, 'services "web" is forbidden: ' + agent_says(
        'get resource "services" in API group "" in the namespace "shop"'),
        name="web", kind="services")

    out = agent.patch(Service.Status, "web",
                      {"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}},
                      namespace="shop")
    assert out.status.loadBalancer.ingress[0].ip == "192.0.2.10"
    agent.patch(Service, "web", {"metadata": {"finalizers": [
        "service.kubernetes.io/load-balancer-cleanup"]}}, namespace="shop")

    # the reads the agent's informers make
    for res in (Node, IPPool, BGPPeer):
        assert list(agent.list(res)) == []
    assert list(agent.list(EndpointSlice, namespace="*")) == []

    status = refused(agent.delete, Service, "web", namespace="shop")
    assert_forbidden(status, 'services "web" is forbidden: ' + agent_says(
        'delete resource "services" in API group "" in the namespace "shop"'),
        name="web", kind="services")
    status = refused(agent.create, service("mine", "shop"))
    assert_forbidden(status, "services is forbidden: " + agent_says(
        'create resource "services" in API group "" in the namespace "shop"'), kind="services")


def test_agent_may_not_touch_what_it_was_not_given(rbac_api, agent):
    rbac_api.create(configmap("settings", NS).to_dict())
    status = refused(agent.list, ConfigMap, namespace=NS)
    assert_forbidden(status, "configmaps is forbidden: " + agent_says(
        f'list resource "configmaps" in API group "" in the namespace "{NS}"'),
        kind="configmaps")
    status = refused(agent.get, ConfigMap, "settings", namespace=NS)
    assert status.message.startswith('configmaps "settings" is forbidden: ')

    # Secrets are not served here, but the refusal comes first, as on a real server
    status = refused(agent.list, Secret, namespace="*")
    assert_forbidden(status, "secrets is forbidden: " + agent_says(
        'list resource "secrets" in API group "" at the cluster scope'), kind="secrets")
    assert refused(rbac_api.client().list, Secret, namespace="*").code == 404

    status = refused(agent.patch, Node, "node-a", {"metadata": {"labels": {"x": "y"}}})
    assert_forbidden(status, 'nodes "node-a" is forbidden: ' + agent_says(
        'patch resource "nodes" in API group "" at the cluster scope'),
        name="node-a", kind="nodes")


def test_agent_lease_rights_are_narrowed_to_its_lease(rbac_api, agent):
    created = agent.create(lease(LEASE))
    assert created.metadata.name == LEASE
    got = agent.get(Lease, LEASE, namespace=NS)
    got.spec.holderIdentity = "node-b"
    assert agent.replace(got).spec.holderIdentity == "node-b"

    # create is granted on any Lease name in the namespace (RBAC cannot narrow it) ...
    agent.create(lease("other"))
    # ... but get and update only on pyxlb-controller
    for call, verb in ((lambda: agent.get(Lease, "other", namespace=NS), "get"),
                       (lambda: agent.replace(lease("other")), "update"),
                       (lambda: agent.patch(Lease, LEASE, {"spec": {}}, namespace=NS), "patch"),
                       (lambda: agent.delete(Lease, LEASE, namespace=NS), "delete")):
        status = refused(call)
        name = "other" if verb in ("get", "update") else LEASE
        assert_forbidden(status, f'leases.coordination.k8s.io "{name}" is forbidden: '
                         + agent_says(f'{verb} resource "leases" in API group '
                                      f'"coordination.k8s.io" in the namespace "{NS}"'),
                         name=name, group="coordination.k8s.io", kind="leases")
    status = refused(agent.list, Lease, namespace=NS)
    assert status.message == "leases.coordination.k8s.io is forbidden: " + agent_says(
        f'list resource "leases" in API group "coordination.k8s.io" in the namespace "{NS}"')
    # the Role holds in pyxlb-system only
    status = refused(agent.create, lease(LEASE, "default"))
    assert status.message == "leases.coordination.k8s.io is forbidden: " + agent_says(
        'create resource "leases" in API group "coordination.k8s.io" in the namespace '
        '"default"')


def test_rolebinding_to_clusterrole_is_namespace_scoped(rbac_api, agent):
    rbac_api.create({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                     "metadata": {"name": "configmap-reader"},
                     "rules": [{"apiGroups": [""], "resources": ["configmaps"],
                                "verbs": ["get", "list", "watch"]}]})
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "read-config", "namespace": "team-a"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                           "name": "configmap-reader"},
               "subjects": [{"kind": "ServiceAccount", "name": SA, "namespace": NS}]}
    for ns in ("team-a", "team-b"):
        rbac_api.create(configmap("cm", ns).to_dict())
    assert refused(agent.list, ConfigMap, namespace="team-a").code == 403
    rbac_api.create(binding)      # RBAC is read live: no restart, no cache
    assert [c.metadata.name for c in agent.list(ConfigMap, namespace="team-a")] == ["cm"]
    assert refused(agent.list, ConfigMap, namespace="team-b").message == \
        "configmaps is forbidden: " + agent_says(
            'list resource "configmaps" in API group "" in the namespace "team-b"')
    assert refused(agent.list, ConfigMap, namespace="*").message == \
        "configmaps is forbidden: " + agent_says(
            'list resource "configmaps" in API group "" at the cluster scope')
    grant = rbac_api.audit[-3].grant
    assert (grant.binding_kind, grant.binding_namespace, grant.role_kind, grant.role_name) == \
        ("RoleBinding", "team-a", "ClusterRole", "configmap-reader")

    # a binding whose role is gone: the real server says so after the refusal
    rbac_api.delete("ClusterRole", "configmap-reader")
    assert refused(agent.list, ConfigMap, namespace="team-a").message == \
        "configmaps is forbidden: " + agent_says(
            'list resource "configmaps" in API group "" in the namespace "team-a"') + \
        ': RBAC: clusterrole.rbac.authorization.k8s.io "configmap-reader" not found'


def test_resource_names_rules(rbac_api, agent):
    rbac_api.create({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                     "metadata": {"name": "one-configmap", "namespace": "team-a"},
                     "rules": [{"apiGroups": [""], "resources": ["configmaps"],
                                "resourceNames": ["mine"],
                                "verbs": ["get", "list", "watch", "create", "update"]}]})
    rbac_api.create({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                     "metadata": {"name": "one-configmap", "namespace": "team-a"},
                     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                 "name": "one-configmap"},
                     "subjects": [{"kind": "ServiceAccount", "name": SA, "namespace": NS}]})
    for name in ("mine", "theirs"):
        rbac_api.create(configmap(name, "team-a").to_dict())

    assert agent.get(ConfigMap, "mine", namespace="team-a").metadata.name == "mine"
    assert refused(agent.get, ConfigMap, "theirs", namespace="team-a").code == 403
    # a list or watch narrowed to the name by a field selector is a request for that name
    assert [c.metadata.name for c in agent.list(ConfigMap, namespace="team-a",
                                                fields={"metadata.name": "mine"})] == ["mine"]
    events = agent.watch(ConfigMap, namespace="team-a", fields={"metadata.name": "mine"},
                         server_timeout=5)
    assert next(events)[0] == "ADDED"
    events.close()
    assert refused(agent.list, ConfigMap, namespace="team-a").code == 403
    status = refused(agent.list, ConfigMap, namespace="team-a",
                     fields={"metadata.name": "theirs"})
    assert (status.message.split(" is forbidden")[0], status.details.name) == \
        ('configmaps "theirs"', "theirs")
    # create carries no name in its URL: a rule with resourceNames never allows it
    rbac_api.delete("ConfigMap", "mine", "team-a")
    assert_forbidden(refused(agent.create, configmap("mine", "team-a")),
                     "configmaps is forbidden: " + agent_says(
                         'create resource "configmaps" in API group "" in the namespace '
                         '"team-a"'), kind="configmaps")


def test_audit_records_allowed_and_refused_requests(rbac_api, agent):
    rbac_api.clear_audit()
    assert rbac_api.audit == []
    assert refused(agent.get, Lease, LEASE, namespace=NS).code == 404
    refused(agent.delete, Service, "ghost", namespace="shop")
    agent.create(lease(LEASE))
    rows = [(r.user, r.verb, r.api_group, r.resource, r.subresource, r.namespace, r.name,
             r.allowed, r.code) for r in rbac_api.audit]
    assert rows == [
        (AGENT, "get", "coordination.k8s.io", "leases", "", NS, LEASE, True, 404),
        (AGENT, "delete", "", "services", "", "shop", "ghost", False, 403),
        (AGENT, "create", "coordination.k8s.io", "leases", "", NS, "", True, 201),
    ]
    assert rbac_api.audit[2].grant.role_name == "pyxlb-agent-leader-election"
    rbac_api.clear_audit()
    assert rbac_api.audit == []


def test_least_privilege_from_recorded_requests(rbac_api, agent):
    """The offline check later tests make with an agent's recorded requests: which rule of
    deploy/rbac.yaml each needs, and which permissions nothing used."""
    admin = rbac_api.client()
    admin.create(service("web", "shop"))
    rbac_api.clear_audit()
    list(agent.list(Service, namespace="*"))
    agent.patch(Service.Status, "web", {"status": {"loadBalancer": {}}}, namespace="shop")
    agent.create(lease(LEASE))
    agent.replace(agent.get(Lease, LEASE, namespace=NS))
    requests = [r for r in rbac_api.audit if r.allowed]
    assert len(requests) == 5

    docs = [d for d in yaml.safe_load_all(RBAC_YAML.read_text()) if d]
    # every request passes on the file as shipped; take one needed verb away and one fails
    assert all(authorize(docs, r.user, r.groups, r.attributes) for r in requests)
    needed = auth.Permission("ClusterRole", "", "pyxlb-agent", 2, "patch", "services/status")
    reduced = auth.without_permission(docs, needed)
    assert [r.attributes.describe() for r in requests
            if not authorize(reduced, r.user, r.groups, r.attributes)] == \
        ["patch services/status 'web' in shop"]
    # the other rules still stand: patching the Service itself (rule 1)
    still = RequestAttributes("patch", "services", namespace="shop", name="web")
    assert authorize(reduced, AGENT, AGENT_GROUPS, still)

    unused = {str(p) for p in auth.unused_permissions(docs, requests)}
    assert "ClusterRole pyxlb-agent rule 2: patch services/status" not in unused
    assert "Role pyxlb-system/pyxlb-agent-leader-election rule 1: update leases" not in unused
    assert "ClusterRole pyxlb-agent rule 0: list services" not in unused
    # what this short scenario never did is reported
    assert "ClusterRole pyxlb-agent rule 0: watch services" in unused
    assert "ClusterRole pyxlb-agent rule 4: list nodes" in unused
    assert "ClusterRole pyxlb-agent rule 6: create events" in unused


# -- the pure authorizer ------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped():
    return [d for d in yaml.safe_load_all(RBAC_YAML.read_text()) if d]


def test_authorize_offline(shipped):
    def check(attrs, user=AGENT, groups=AGENT_GROUPS):
        return authorize(shipped, user, groups, attrs)

    d = check(RequestAttributes("watch", "services"))
    assert d.allowed and str(d.grant) == \
        'ClusterRoleBinding "pyxlb-agent" of ClusterRole "pyxlb-agent" rule 0'
    d = check(RequestAttributes("update", "leases", "coordination.k8s.io", NS, LEASE))
    assert d.allowed and (d.grant.binding_kind, d.grant.rule_index) == ("RoleBinding", 1)
    assert check(RequestAttributes("create", "leases", "coordination.k8s.io", NS)).grant \
        .rule_index == 0
    assert not check(RequestAttributes("update", "leases", "coordination.k8s.io", "default",
                                       LEASE))
    assert not check(RequestAttributes("get", "leases", "coordination.k8s.io", NS, "other"))
    assert check(RequestAttributes("create", "events", "", "shop"))
    assert not check(RequestAttributes("create", "events", "events.k8s.io", "shop"))
    assert not check(RequestAttributes("update", "events", "", "shop", "e"))
    assert not check(RequestAttributes("list", "services"), user="system:serviceaccount:"
                     "default:pyxlb-agent", groups=("system:authenticated",))
    # system:masters passes everything, whatever RBAC says
    assert authorize([], "root", ("system:masters",), RequestAttributes("delete", "nodes",
                                                                         name="n")).allowed
    # the built-in non-resource grants
    anon = ("system:unauthenticated",)
    assert authorize([], "system:anonymous", anon, RequestAttributes.non_resource(
        "get", "/readyz"))
    assert not authorize([], "system:anonymous", anon, RequestAttributes.non_resource(
        "get", "/api/v1"))
    assert authorize([], "u", ("system:authenticated",), RequestAttributes.non_resource(
        "get", "/apis/pyxlb.io/v1alpha1"))
    assert not authorize([], "u", ("system:authenticated",), RequestAttributes.non_resource(
        "get", "/metrics"))


def test_rule_matching_wildcards_and_subjects():
    def role(rules, kind="ClusterRole", ns=None):
        meta = {"name": "r"} if ns is None else {"name": "r", "namespace": ns}
        return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta,
                "rules": rules}

    def binding(subject, kind="ClusterRoleBinding", role_kind="ClusterRole", ns=None):
        meta = {"name": "b"} if ns is None else {"name": "b", "namespace": ns}
        return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta,
                "roleRef": {"kind": role_kind, "name": "r"}, "subjects": [subject]}

    status_any = [role([{"apiGroups": ["*"], "resources": ["*/status"], "verbs": ["*"]}]),
                  binding({"kind": "Group", "name": "ops"})]
    ops = ("ops", "system:authenticated")
    assert authorize(status_any, "u", ops, RequestAttributes(
        "patch", "ippools", "pyxlb.io", name="p", subresource="status"))
    assert not authorize(status_any, "u", ops, RequestAttributes(
        "patch", "ippools", "pyxlb.io", name="p"))
    assert not authorize(status_any, "u", ("dev",), RequestAttributes(
        "patch", "ippools", "pyxlb.io", name="p", subresource="status"))
    everything = [role([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["get"]}]),
                  binding({"kind": "User", "name": "alice"})]
    assert authorize(everything, "alice", (), RequestAttributes(
        "get", "services", namespace="x", name="s", subresource="status"))
    assert not authorize(everything, "bob", (), RequestAttributes("get", "services", "", "x"))
    # a ServiceAccount subject without a namespace means the RoleBinding's own
    local = [role([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
                  kind="Role", ns="a"),
             binding({"kind": "ServiceAccount", "name": "bot"}, kind="RoleBinding",
                     role_kind="Role", ns="a")]
    assert authorize(local, "system:serviceaccount:a:bot", (), RequestAttributes(
        "get", "configmaps", "", "a", "c"))
    assert not authorize(local, "system:serviceaccount:b:bot", (), RequestAttributes(
        "get", "configmaps", "", "a", "c"))
    # a RoleBinding never reaches the cluster scope, even to a ClusterRole
    wide = [role([{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}]),
            binding({"kind": "User", "name": "u"}, kind="RoleBinding", ns="a")]
    assert not authorize(wide, "u", (), RequestAttributes("list", "nodes"))
    # two missing roles: the reason aggregates both
    broken = [binding({"kind": "User", "name": "u"}),
              dict(binding({"kind": "User", "name": "u"}, kind="RoleBinding", role_kind="Role",
                           ns="a"), metadata={"name": "c", "namespace": "a"})]
    d = authorize(broken, "u", (), RequestAttributes("get", "pods", "", "a", "p"))
    assert d.reason == ('RBAC: [clusterrole.rbac.authorization.k8s.io "r" not found, '
                        'role.rbac.authorization.k8s.io "r" not found]')


def test_request_attributes_as_kube_apiserver_reads_them():
    def attrs(method, path, **query):
        return request_attributes(method, path, query)

    a = attrs("GET", "/api/v1/services", watch="true")
    assert (a.verb, a.resource, a.namespace, a.name) == ("watch", "services", "", "")
    a = attrs("GET", "/apis/coordination.k8s.io/v1/namespaces/x/leases",
              fieldSelector="metadata.name=l")
    assert (a.verb, a.api_group, a.namespace, a.name) == ("list", "coordination.k8s.io", "x", "l")
    assert attrs("GET", "/api/v1/services", fieldSelector="metadata.name!=l").name == ""
    a = attrs("PUT", "/api/v1/namespaces/shop/services/web/status")
    assert (a.verb, a.resource, a.subresource, a.name) == ("update", "services", "status", "web")
    a = attrs("GET", "/api/v1/namespaces/shop")      # a Namespace's namespace is itself
    assert (a.verb, a.resource, a.namespace, a.name) == ("get", "namespaces", "shop", "shop")
    a = attrs("PUT", "/api/v1/namespaces/shop/status")
    assert (a.resource, a.name, a.subresource) == ("namespaces", "shop", "status")
    assert attrs("DELETE", "/api/v1/namespaces/x/configmaps").verb == "deletecollection"
    assert attrs("POST", "/api/v1/namespaces/x/configmaps").verb == "create"
    for path in ("/api", "/api/v1", "/apis/pyxlb.io/v1alpha1", "/healthz", "/version"):
        a = attrs("GET", path)
        assert not a.resource_request and (a.verb, a.path) == ("get", path)


def test_forbidden_status_shape():
    st = auth.forbidden_status("u", RequestAttributes("update", "leases", "coordination.k8s.io",
                                                      "ns", "l"))
    assert st == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                  "message": 'leases.coordination.k8s.io "l" is forbidden: User "u" cannot '
                             'update resource "leases" in API group "coordination.k8s.io" in '
                             'the namespace "ns"',
                  "reason": "Forbidden",
                  "details": {"name": "l", "group": "coordination.k8s.io", "kind": "leases"},
                  "code": 403}
    st = auth.forbidden_status("u", RequestAttributes("patch", "services", namespace="n",
                                                      name="s", subresource="status"))
    assert st["message"] == ('services "s" is forbidden: User "u" cannot patch resource '
                             '"services/status" in API group "" in the namespace "n"')
    assert st["details"] == {"name": "s", "kind": "services"}


# -- manifests and request bodies ---------------------------------------------------------


def test_apply_manifests_creates_what_is_served_and_skips_the_rest(tls_api):
    pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n"
    assert [d["kind"] for d in tls_api.apply_manifests(pod)] == ["Pod"], "not served: skipped"
    for crd in sorted((ROOT / "deploy" / "crds").glob("*.yaml")):
        assert tls_api.apply_manifests(str(crd)) == []      # stored (IPPool, BGPPeer are served)
    text = NAMESPACE_YAML.read_text() + "\n---\n" + RBAC_YAML.read_text() + "\n---\n"
    assert tls_api.apply_manifests(text) == []
    assert tls_api.apply_manifests(ROOT / "deploy" / "daemonset.yaml") == []
    assert tls_api.get("Namespace", NS)["metadata"]["labels"][
        "pod-security.kubernetes.io/enforce"] == "privileged"
    assert tls_api.get("RoleBinding", "pyxlb-agent-leader-election", NS) is not None
    assert {o["metadata"]["name"] for o in tls_api.rbac_objects()} == \
        {"pyxlb-agent", "pyxlb-agent-leader-election"}
    with pytest.raises(StandInError) as err:
        tls_api.apply_manifests(RBAC_YAML)
    assert err.value.code == 409


def test_chunked_request_body(tls_api):
    ctx = ssl.create_default_context(cafile=tls_api.ca_file)
    body = json.dumps({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "chunked"}, "data": {"a": "b" * 5000}}).encode()

    def post(chunks, encode_chunked=True):
        conn = http.client.HTTPSConnection(tls_api.host, tls_api.port, context=ctx, timeout=5)
        try:
            conn.request("POST", "/api/v1/namespaces/default/configmaps", body=iter(chunks),
                         headers={"Content-Type": "application/json", "Transfer-Encoding":
                                  "chunked", "Authorization": f"Bearer {tls_api.admin_token}"},
                         encode_chunked=encode_chunked)
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()

    code, out = post([body[:100], body[100:4000], body[4000:]])
    assert code == 201 and out["data"]["a"] == "b" * 5000
    assert tls_api.get("ConfigMap", "chunked", "default")["metadata"]["name"] == "chunked"
    code, out = post([b"zz\r\nnot hex\r\n"], encode_chunked=False)
    assert code == 400 and out["reason"] == "BadRequest"
