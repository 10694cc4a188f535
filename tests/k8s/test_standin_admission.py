"""The API stand-in's admission (tests.support.standin_admission) through the real lightkube
client over HTTP: what kube-apiserver 1.33 fills in on a Service (defaults, cluster IPs,
node ports, health check node port), what it carries over and drops on an update, what it
refuses (with its messages), and namespaces as objects (missing, terminating, emptied and
removed by the namespace controller in the background, immortal)."""

import ipaddress
import json
import time

import httpx2
import pytest
from lightkube import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap, Namespace, Service
from lightkube.resources.discovery_v1 import EndpointSlice
from lightkube.resources.rbac_authorization_v1 import Role
from lightkube.types import PatchType

from pyxlb.k8s import objects

from tests.support.standin import ApiStandIn, StandInError
from tests.support.standin_admission import default_service

V4, V6 = ipaddress.ip_network("10.96.0.0/12"), ipaddress.ip_network("fd00:10:96::/108")
CLEANUP = "service.kubernetes.io/load-balancer-cleanup"      # the finalizer pyxlb sets


def service(name, namespace="default", **spec):
    """A Service as a user writes it: one TCP port 80 unless `ports` says otherwise."""
    spec.setdefault("ports", [{"port": 80}])
    return Service.from_dict({"metadata": {"name": name, "namespace": namespace},
                              "spec": spec})


def refused(call, *args, **kw):
    """The Status of a refused request."""
    with pytest.raises(ApiError) as err:
        call(*args, **kw)
    return err.value.status


def node_port(value):
    return 30000 <= value <= 32767


def spec_of(api, name, namespace="default"):
    return api.get("Service", name, namespace)["spec"]


# -- Service defaults -------------------------------------------------------------------------


def test_a_minimal_service_gets_the_api_servers_defaults(api):
    got = api.client().create(service("web")).to_dict()
    spec = got["spec"]
    ip = spec.pop("clusterIP")
    assert ipaddress.ip_address(ip) in V4 and spec.pop("clusterIPs") == [ip]
    assert spec == {"type": "ClusterIP", "sessionAffinity": "None",
                    "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}],
                    "ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv4"],
                    "internalTrafficPolicy": "Cluster"}, "no externalTrafficPolicy for ClusterIP"
    assert got["status"] == {"loadBalancer": {}}


def test_load_balancer_defaults_node_ports_and_health_check_port(api):
    c = api.client()
    lb = c.create(service("lb", type="LoadBalancer")).spec
    assert (lb.externalTrafficPolicy, lb.allocateLoadBalancerNodePorts) == ("Cluster", True)
    assert node_port(lb.ports[0].nodePort) and lb.healthCheckNodePort is None
    local = c.create(service("local", type="LoadBalancer", externalTrafficPolicy="Local")).spec
    assert node_port(local.healthCheckNodePort)
    assert len({lb.ports[0].nodePort, local.ports[0].nodePort, local.healthCheckNodePort}) == 3
    # a LoadBalancer without node ports still has its health check node port
    bare = c.create(service("bare", type="LoadBalancer", externalTrafficPolicy="Local",
                            allocateLoadBalancerNodePorts=False)).spec
    assert bare.ports[0].nodePort is None and node_port(bare.healthCheckNodePort)
    node = c.create(service("np", type="NodePort")).spec
    assert node.externalTrafficPolicy == "Cluster" and node.allocateLoadBalancerNodePorts is None
    # named targetPorts stay; ClientIP affinity gets the default timeout
    named = c.create(service("named", ports=[{"port": 80, "targetPort": "http"}],
                             sessionAffinity="ClientIP")).spec
    assert named.ports[0].targetPort == "http"
    assert named.sessionAffinityConfig.clientIP.timeoutSeconds == 10800


def test_tcp_and_udp_on_one_port_share_a_node_port(api):
    c = api.client()
    dns = c.create(service("dns", type="NodePort", ports=[
        {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
        {"name": "dns-udp", "port": 53, "protocol": "UDP"},
        {"name": "web", "port": 80}])).spec
    tcp, udp, web = (p.nodePort for p in dns.ports)
    assert tcp == udp and web != tcp and node_port(web)


def test_headless_and_external_name(api):
    c = api.client()
    selected = c.create(service("db", clusterIP="None", selector={"app": "db"})).spec
    assert (selected.clusterIP, selected.clusterIPs) == ("None", ["None"])
    assert (selected.ipFamilyPolicy, selected.ipFamilies) == ("SingleStack", ["IPv4"])
    bare = c.create(service("peers", clusterIP="None")).spec
    assert (bare.ipFamilyPolicy, bare.ipFamilies) == ("RequireDualStack", ["IPv4", "IPv6"])
    ext = c.create(service("ext", type="ExternalName", externalName="db.example.com.",
                           ports=[])).to_dict()["spec"]
    assert ext == {"type": "ExternalName", "externalName": "db.example.com.",
                   "sessionAffinity": "None"}


def test_ip_families_follow_the_policy_on_a_dual_stack_cluster(api):
    c = api.client()
    prefer = c.create(service("prefer", ipFamilyPolicy="PreferDualStack")).spec
    assert prefer.ipFamilies == ["IPv4", "IPv6"]
    v4, v6 = map(ipaddress.ip_address, prefer.clusterIPs)
    assert v4 in V4 and v6 in V6 and prefer.clusterIP == str(v4)
    six = c.create(service("six", ipFamilies=["IPv6", "IPv4"],
                           ipFamilyPolicy="RequireDualStack")).spec
    assert [ipaddress.ip_address(a).version for a in six.clusterIPs] == [6, 4]
    only6 = c.create(service("only6", ipFamilies=["IPv6"])).spec
    assert only6.ipFamilyPolicy == "SingleStack" and ipaddress.ip_address(only6.clusterIP) in V6
    status = refused(c.create, service("two", ipFamilies=["IPv4", "IPv6"]))
    assert status.code == 422 and status.message == (
        'Service "two" is invalid: spec.ipFamilyPolicy: Invalid value: "SingleStack": must be '
        "'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified")


def test_a_single_stack_cluster():
    with ApiStandIn(service_cidrs=("10.100.0.0/16",)) as api:
        c = api.client()
        prefer = c.create(service("prefer", ipFamilyPolicy="PreferDualStack")).spec
        assert prefer.ipFamilies == ["IPv4"]
        assert ipaddress.ip_address(prefer.clusterIP) in ipaddress.ip_network("10.100.0.0/16")
        status = refused(c.create, service("dual", ipFamilyPolicy="RequireDualStack"))
        assert status.message == (
            'Service "dual" is invalid: spec.ipFamilyPolicy: Invalid value: "RequireDualStack": '
            "this cluster is not configured for dual-stack services")
        status = refused(c.create, service("six", ipFamilies=["IPv6"]))
        assert status.message == ('Service "six" is invalid: spec.ipFamilies[0]: Invalid value: '
                                  '"IPv6": not configured on this cluster')
    with pytest.raises(StandInError) as err:
        ApiStandIn(service_cidrs=("10.0.0.0/8",))
    assert "too large" in str(err.value)


def test_requested_cluster_ips_and_node_ports(api):
    c = api.client()
    got = c.create(service("fixed", type="NodePort", clusterIP="10.96.0.10",
                           ports=[{"port": 80, "nodePort": 30080}])).spec
    assert (got.clusterIP, got.clusterIPs, got.ports[0].nodePort) == (
        "10.96.0.10", ["10.96.0.10"], 30080)
    status = refused(c.create, service("again", clusterIP="10.96.0.10"))
    assert status.message == ('Service "again" is invalid: spec.clusterIPs: Invalid value: '
                              '[]string{"10.96.0.10"}: failed to allocate IP 10.96.0.10: '
                              "provided IP is already allocated")
    status = refused(c.create, service("outside", clusterIP="192.168.0.10"))
    assert (status.code, status.reason) == (422, "Invalid")
    assert "failed to allocate IP 192.168.0.10" in status.message
    status = refused(c.create, service("taken", type="NodePort",
                                       ports=[{"port": 81, "nodePort": 30080}]))
    assert status.message == ('Service "taken" is invalid: spec.ports[0].nodePort: Invalid value: '
                              "30080: provided port is already allocated")
    cause = status.details.causes[0]
    assert (cause.field, cause.reason) == ("spec.ports[0].nodePort", "FieldValueInvalid")
    assert (status.details.kind, status.details.name) == ("Service", "taken")
    status = refused(c.create, service("far", type="NodePort",
                                       ports=[{"port": 81, "nodePort": 8080}]))
    assert status.message.endswith("spec.ports[0].nodePort: Invalid value: 8080: provided port "
                                   "is not in the valid range. The range of valid ports is "
                                   "30000-32767")
    # a health check node port that is taken is the server's failure: 500
    status = refused(c.create, service("hc", type="LoadBalancer", externalTrafficPolicy="Local",
                                       healthCheckNodePort=30080))
    assert (status.code, status.reason) == (500, "InternalError")
    assert "failed to allocate requested HealthCheck NodePort 30080" in status.message


# -- updates: what is carried over, released, dropped -------------------------------------------


def test_an_update_that_leaves_out_allocated_values_keeps_them(api):
    c = api.client()
    body = service("web", type="LoadBalancer", externalTrafficPolicy="Local",
                   loadBalancerClass=objects.LB_CLASS, ports=[{"name": "http", "port": 80}])
    made = c.create(body)
    # the user applies the same manifest again: nothing changes, it is not even a write
    body.metadata.resourceVersion = made.metadata.resourceVersion
    again = c.replace(body)
    assert again.metadata.resourceVersion == made.metadata.resourceVersion
    assert again.spec == made.spec
    # a port renumbered under the same name keeps its node port; a new port gets its own
    body.spec.ports = [{"name": "http", "port": 8080}, {"name": "https", "port": 443}]
    changed = c.replace(body).spec
    assert changed.ports[0].nodePort == made.spec.ports[0].nodePort
    assert node_port(changed.ports[1].nodePort)
    assert changed.ports[1].nodePort != changed.ports[0].nodePort
    assert (changed.clusterIP, changed.healthCheckNodePort) == (
        made.spec.clusterIP, made.spec.healthCheckNodePort)


def test_type_and_policy_changes_release_what_they_no_longer_need(api):
    c = api.client()
    made = c.create(service("web", type="LoadBalancer", externalTrafficPolicy="Local",
                            loadBalancerClass=objects.LB_CLASS)).spec
    port, health = made.ports[0].nodePort, made.healthCheckNodePort
    c.patch(Service.Status, "web", {"status": {"loadBalancer": {"ingress": [
        {"ip": "192.0.2.1"}]}}}, patch_type=PatchType.MERGE)
    assert api.get("Service", "web")["status"]["loadBalancer"]["ingress"] == [
        {"ip": "192.0.2.1", "ipMode": "VIP"}], "ipMode defaults to VIP"

    cluster = c.patch(Service, "web", {"spec": {"externalTrafficPolicy": "Cluster"}}).spec
    assert cluster.healthCheckNodePort is None and cluster.ports[0].nodePort == port
    # the health check port is free again: another Service may ask for it
    c.create(service("other", type="NodePort", ports=[{"port": 80, "nodePort": health}]))

    c.patch(Service, "web", {"spec": {"type": "ClusterIP"}})
    got = api.get("Service", "web")
    for gone in ("externalTrafficPolicy", "loadBalancerClass", "allocateLoadBalancerNodePorts"):
        assert gone not in got["spec"], gone
    assert "nodePort" not in got["spec"]["ports"][0]
    assert got["status"] == {"loadBalancer": {}}, "not a LoadBalancer: its status goes"
    assert got["spec"]["clusterIP"] == made.clusterIP
    c.create(service("taker", type="NodePort", ports=[{"port": 80, "nodePort": port}]))

    # a deleted Service's cluster IP is free again
    c.delete(Service, "web")
    assert c.create(service("reuse", clusterIP=made.clusterIP)).spec.clusterIP == made.clusterIP


def test_what_may_not_change(api):
    c = api.client()
    made = c.create(service("web", type="LoadBalancer", loadBalancerClass=objects.LB_CLASS)).spec
    status = refused(c.patch, Service, "web", {"spec": {"clusterIP": "10.96.0.100"}})
    assert status.message == ('Service "web" is invalid: spec.clusterIPs[0]: Invalid value: '
                              '[]string{"10.96.0.100"}: may not change once set')
    status = refused(c.patch, Service, "web", {"spec": {"loadBalancerClass": "example.com/x"}})
    assert status.message == ('Service "web" is invalid: spec.loadBalancerClass: Invalid value: '
                              '"example.com/x": may not change once set')
    # a family that does not match the address is caught before allocation...
    status = refused(c.patch, Service, "web", {"spec": {"ipFamilies": ["IPv6"]}})
    assert status.message == (
        'Service "web" is invalid: spec.clusterIPs[0]: Invalid value: "%s": expected an IPv6 '
        "value as indicated by `ipFamilies[0]`" % made.clusterIP)
    assert api.get("Service", "web")["spec"]["clusterIP"] == made.clusterIP
    # ...and swapping a dual-stack Service's families (addresses with them) changes the primary
    dual = c.create(service("dual", ipFamilyPolicy="PreferDualStack")).spec
    v4, v6 = dual.clusterIPs
    status = refused(c.patch, Service, "dual", {"spec": {
        "ipFamilies": ["IPv6", "IPv4"], "clusterIP": v6, "clusterIPs": [v6, v4]}})
    causes = {(cause.field, cause.message.split(": ")[-1]) for cause in status.details.causes}
    assert ("spec.ipFamilies[0]", "may not change once set") in causes
    assert ("spec.clusterIPs[0]", "may not change once set") in causes

    c.create(EndpointSlice.from_dict(objects.endpoint_slice("web", [])))
    status = refused(c.patch, EndpointSlice, "web-ipv4", {"addressType": "IPv6"},
                     patch_type=PatchType.MERGE)
    assert status.message == ('EndpointSlice.discovery.k8s.io "web-ipv4" is invalid: '
                              'addressType: Invalid value: "IPv6": field is immutable')
    assert status.details.group == "discovery.k8s.io"


# -- validation -----------------------------------------------------------------------------------


def test_object_names_follow_their_kinds_rules(api):
    c = api.client()
    status = refused(c.create, service("Web_1"))
    assert (status.code, status.reason) == (422, "Invalid")
    assert status.message == (
        "Service \"Web_1\" is invalid: metadata.name: Invalid value: \"Web_1\": a DNS-1035 label "
        "must consist of lower case alphanumeric characters or '-', start with an alphabetic "
        "character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', "
        "regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')")
    assert refused(c.create, service("1web")).code == 422, "a Service name starts with a letter"
    status = refused(c.create, Namespace(metadata=ObjectMeta(name="a.b")))
    assert status.message == ('Namespace "a.b" is invalid: metadata.name: Invalid value: "a.b": '
                              "must not contain dots")
    status = refused(c.create, ConfigMap(metadata=ObjectMeta(name="Bad_Name")))
    assert "a lowercase RFC 1123 subdomain must consist of" in status.message
    assert c.create(ConfigMap(metadata=ObjectMeta(name="1.settings"))).metadata.name
    assert c.create(Role(metadata=ObjectMeta(name="system:pyxlb"))).metadata.name, \
        "RBAC names are path segments"


def test_service_port_rules(api):
    c = api.client()

    def message(**spec):
        return refused(c.create, service("web", **spec)).message.split(" is invalid: ", 1)[1]

    assert message(ports=[]) == "spec.ports: Required value"
    # (the targetPort defaults to the port: it is wrong too)
    assert message(ports=[{"port": 70000}]) == (
        "[spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive, "
        "spec.ports[0].targetPort: Invalid value: 70000: must be between 1 and 65535, "
        "inclusive]")
    assert message(ports=[{"port": 80, "targetPort": "http--x"}]) == (
        'spec.ports[0].targetPort: Invalid value: "http--x": must not contain consecutive '
        "hyphens")
    assert message(ports=[{"port": 80, "protocol": "HTTP"}]) == (
        'spec.ports[0].protocol: Unsupported value: "HTTP": supported values: "SCTP", "TCP", '
        '"UDP"')
    assert message(ports=[{"name": "a", "port": 80}, {"port": 81}]) == (
        "spec.ports[1].name: Required value")
    assert message(ports=[{"name": "a", "port": 80}, {"name": "a", "port": 81}]) == (
        'spec.ports[1].name: Duplicate value: "a"')
    assert message(ports=[{"name": "a", "port": 80}, {"name": "b", "port": 80}]).startswith(
        "spec.ports[1]: Duplicate value: core.ServicePort{")
    # the same port on TCP and UDP is fine
    c.create(service("dns", ports=[{"name": "t", "port": 53}, {"name": "u", "port": 53,
                                                               "protocol": "UDP"}]))
    assert message(type="LoadBalancer",
                   loadBalancerSourceRanges=["198.51.100.0/24", "203.0.113.0/33"]) == (
        'spec.LoadBalancerSourceRanges[1]: Invalid value: "203.0.113.0/33": must be a valid CIDR '
        "value, (e.g. 10.9.8.0/24 or 2001:db8::/64)")
    several = refused(c.create, service("web", ports=[{"port": 0, "protocol": "HTTP"}]))
    assert several.message.startswith('Service "web" is invalid: [spec.ports[0].port: ')
    assert [cause.field for cause in several.details.causes][:2] == [
        "spec.ports[0].port", "spec.ports[0].protocol"]


def test_status_ingress_is_checked(api):
    c = api.client()
    c.create(service("plain"))
    status = refused(c.patch, Service.Status, "plain", {"status": {"loadBalancer": {"ingress": [
        {"ip": "192.0.2.1"}]}}}, patch_type=PatchType.MERGE)
    assert status.message == ('Service "plain" is invalid: status.loadBalancer.ingress: '
                              "Forbidden: may only be used when `spec.type` is 'LoadBalancer'")


def test_endpoint_slices_are_defaulted_but_their_conditions_are_not(api):
    c = api.client()
    c.create(EndpointSlice.from_dict({
        "metadata": {"name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.0.5"], "nodeName": "n1"}],
        "ports": [{"port": 8080}]}))
    got = api.get("EndpointSlice", "web-abc")
    assert got["ports"] == [{"port": 8080, "name": "", "protocol": "TCP"}]
    assert "conditions" not in got["endpoints"][0], "nil conditions mean unknown: left alone"
    status = refused(c.create, EndpointSlice.from_dict({
        "metadata": {"name": "bad"}, "addressType": "IPv4",
        "endpoints": [{"addresses": ["fd00::5"]}]}))
    assert status.message.endswith('endpoints[0].addresses[0]: Invalid value: "fd00::5": must be '
                                   "a valid IPv4 address")


def test_default_service_is_pure():
    obj = {"spec": {"type": "LoadBalancer", "ports": [{"port": 443}]}}
    assert default_service(obj) is obj
    assert obj["spec"] == {"type": "LoadBalancer", "sessionAffinity": "None",
                           "ports": [{"port": 443, "protocol": "TCP", "targetPort": 443}],
                           "externalTrafficPolicy": "Cluster", "internalTrafficPolicy": "Cluster",
                           "allocateLoadBalancerNodePorts": True}
    assert obj["status"] == {"loadBalancer": {}}


# -- namespaces -----------------------------------------------------------------------------------


def test_a_cluster_starts_with_its_namespaces(api):
    names = {n["metadata"]["name"]: n for n in api.list("Namespace")}
    assert {"default", "kube-system", "kube-public", "kube-node-lease"} <= set(names)
    kube_system = names["kube-system"]
    assert kube_system["status"] == {"phase": "Active"}
    assert kube_system["spec"] == {"finalizers": ["kubernetes"]}
    assert kube_system["metadata"]["labels"] == {"kubernetes.io/metadata.name": "kube-system"}
    made = api.client().create(Namespace(metadata=ObjectMeta(name="shop"))).to_dict()
    assert made["status"] == {"phase": "Active"} and made["spec"] == {"finalizers": ["kubernetes"]}
    assert made["metadata"]["labels"] == {"kubernetes.io/metadata.name": "shop"}


def test_creating_in_a_namespace_that_does_not_exist_is_404(api):
    status = refused(api.client().create, service("web", namespace="shop"))
    assert (status.code, status.reason, status.message) == (
        404, "NotFound", 'namespaces "shop" not found')
    assert (status.details.name, status.details.kind) == ("shop", "namespaces")
    with pytest.raises(StandInError) as err:
        api.create(objects.service("web", "shop"))
    assert err.value.code == 404 and str(err.value) == 'namespaces "shop" not found'


def replayed(api, path, since):
    """The events a watch of `path` from resourceVersion `since` gets (the stand-in replays
    its history in order; the watch ends after a second)."""
    with httpx2.Client(base_url=api.url, trust_env=False) as h:
        resp = h.get(path, params={"watch": "1", "resourceVersion": str(since),
                                   "timeoutSeconds": "1"})
    assert resp.status_code == 200, resp.text
    return [json.loads(line) for line in resp.text.splitlines() if line.strip()]


def conditions_of(ns: dict) -> dict:
    return {c["type"]: (c["status"], c["reason"], c["message"])
            for c in (ns.get("status") or {}).get("conditions") or ()}


ALL_DONE = {
    "NamespaceDeletionDiscoveryFailure": ("False", "ResourcesDiscovered",
                                          "All resources successfully discovered"),
    "NamespaceDeletionGroupVersionParsingFailure": ("False", "ParsedGroupVersions",
                                                    "All legacy kube types successfully parsed"),
    "NamespaceDeletionContentFailure": ("False", "ContentDeleted", "All content successfully "
                                        "deleted, may be waiting on finalization"),
    "NamespaceContentRemaining": ("False", "ContentRemoved", "All content successfully removed"),
    "NamespaceFinalizersRemaining": ("False", "ContentHasNoFinalizers",
                                     "All content-preserving finalizers finished"),
}


def test_a_terminating_namespace_keeps_its_content_until_the_controller_comes():
    """DELETE of a Namespace answers it Terminating (200) and deletes nothing yet: what it
    holds can still be read, changed and deleted, while nothing new may be created in it
    (the NamespaceLifecycle refusal, with its cause). A controller pass still pending does
    not hold up stop()."""
    with ApiStandIn(namespace_delay=60) as api:
        c = api.client()
        c.create(Namespace(metadata=ObjectMeta(name="shop")))
        for name in ("settings", "old"):
            c.create(ConfigMap(metadata=ObjectMeta(name=name, namespace="shop"), data={"a": "1"}))
        with httpx2.Client(base_url=api.url, trust_env=False) as h:
            resp = h.delete("/api/v1/namespaces/shop")
            again = h.delete("/api/v1/namespaces/shop")
        assert resp.status_code == 200 and again.status_code == 200
        answered = resp.json()
        assert (answered["kind"], answered["status"]["phase"]) == ("Namespace", "Terminating")
        assert answered["metadata"]["deletionTimestamp"]
        assert answered["spec"] == {"finalizers": ["kubernetes"]}
        assert again.json()["metadata"]["resourceVersion"] == \
            answered["metadata"]["resourceVersion"], "deleting it again changes nothing"
        assert c.get(Namespace, "shop").status.phase == "Terminating"

        assert c.get(ConfigMap, "settings", namespace="shop").data == {"a": "1"}
        c.patch(ConfigMap, "settings", {"data": {"a": "2"}}, namespace="shop")
        assert api.get("ConfigMap", "settings", "shop")["data"] == {"a": "2"}
        c.delete(ConfigMap, "old", namespace="shop")
        assert api.get("ConfigMap", "old", "shop") is None

        for meta in (ObjectMeta(name="late", namespace="shop"),
                     ObjectMeta(generateName="late-", namespace="shop")):
            status = refused(c.create, ConfigMap(metadata=meta))
            name = meta.name or meta.generateName
            assert (status.code, status.reason) == (403, "Forbidden")
            assert status.message == (f'configmaps "{name}" is forbidden: unable to create new '
                                      f"content in namespace shop because it is being terminated")
            assert (status.details.name, status.details.kind) == (name, "configmaps")
            cause = status.details.causes[0]
            assert (cause.reason, cause.message, cause.field) == (
                "NamespaceTerminating", "namespace shop is being terminated", "metadata.namespace")
        assert refused(c.create, Namespace(metadata=ObjectMeta(name="shop"))).reason == \
            "AlreadyExists"
        assert api.get("Namespace", "shop")["status"]["phase"] == "Terminating"
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 5


def test_the_namespace_controller_empties_then_removes_a_namespace(api):
    """What a watch sees, as on a real cluster: the Namespace MODIFIED (Terminating), its
    content DELETED, the Namespace MODIFIED twice more (the controller's conditions, then its
    "kubernetes" finalizer dropped) and DELETED. Nothing happens before namespace_delay."""
    c = api.client()
    c.create(Namespace(metadata=ObjectMeta(name="shop")))
    for name in ("b", "a"):
        c.create(ConfigMap(metadata=ObjectMeta(name=name, namespace="shop")))
    c.create(service("web", namespace="shop", type="LoadBalancer"))
    c.create(ConfigMap(metadata=ObjectMeta(name="elsewhere", namespace="default")))
    since = api.resource_version
    asked = time.monotonic()
    c.delete(Namespace, "shop")
    assert api.wait_for(lambda: api.get("Namespace", "shop") is None, timeout=10)
    assert time.monotonic() - asked >= api.namespace_delay

    events = replayed(api, "/api/v1/namespaces", since)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == \
        [("MODIFIED", "shop")] * 3 + [("DELETED", "shop")]
    terminating, written, finalized, deleted = (e["object"] for e in events)
    assert terminating["status"] == {"phase": "Terminating"}
    assert terminating["spec"] == written["spec"] == {"finalizers": ["kubernetes"]}
    assert conditions_of(written) == ALL_DONE and written["status"]["phase"] == "Terminating"
    assert finalized["spec"] == {} and conditions_of(finalized) == ALL_DONE
    assert deleted["metadata"]["deletionTimestamp"] == terminating["metadata"]["deletionTimestamp"]

    content = replayed(api, "/api/v1/configmaps", since) + replayed(api, "/api/v1/services", since)
    assert sorted((e["type"], e["object"]["metadata"]["name"]) for e in content) == \
        [("DELETED", "a"), ("DELETED", "b"), ("DELETED", "web")]
    rvs = sorted(int(e["object"]["metadata"]["resourceVersion"]) for e in content)
    assert int(terminating["metadata"]["resourceVersion"]) < rvs[0]
    assert rvs[-1] < int(written["metadata"]["resourceVersion"])
    assert api.get("ConfigMap", "elsewhere", "default") is not None
    assert refused(c.create, service("web", namespace="shop")).code == 404
    c.create(Namespace(metadata=ObjectMeta(name="shop")))      # the name is free again
    assert c.get(Namespace, "shop").status.phase == "Active"


def test_content_with_finalizers_holds_its_namespace_until_released(api):
    c = api.client()
    c.create(Namespace(metadata=ObjectMeta(name="shop")))
    svc = service("web", namespace="shop", type="LoadBalancer")
    svc.metadata.finalizers = [CLEANUP]
    c.create(svc)
    c.create(ConfigMap(metadata=ObjectMeta(name="settings", namespace="shop")))

    c.delete(Namespace, "shop")
    assert api.wait_for(lambda: api.get("ConfigMap", "settings", "shop") is None, timeout=10)
    held = api.get("Service", "web", "shop")
    assert held["metadata"]["deletionTimestamp"], "kept until its finalizer goes"
    assert api.wait_for(lambda: "NamespaceContentRemaining" in conditions_of(
        api.get("Namespace", "shop")), timeout=10)
    ns = api.get("Namespace", "shop")
    conditions = conditions_of(ns)
    assert conditions["NamespaceContentRemaining"] == (
        "True", "SomeResourcesRemain",
        "Some resources are remaining: services. has 1 resource instances")
    assert conditions["NamespaceFinalizersRemaining"] == (
        "True", "SomeFinalizersRemain",
        f"Some content in the namespace has finalizers remaining: {CLEANUP} in 1 resource "
        f"instances")
    assert ns["spec"] == {"finalizers": ["kubernetes"]}, "not finalized while content remains"
    assert refused(c.create, ConfigMap(metadata=ObjectMeta(name="late", namespace="shop"))
                   ).code == 403

    # the Service's controller releases it: it goes at once, the namespace on the next pass
    c.patch(Service, "web", {"metadata": {"finalizers": None}}, namespace="shop",
            patch_type=PatchType.MERGE)
    assert api.get("Service", "web", "shop") is None
    assert api.wait_for(lambda: api.get("Namespace", "shop") is None, timeout=10)
    assert refused(c.create, service("web", namespace="shop")).code == 404


def test_a_namespace_with_its_own_finalizer_waits_for_it(api):
    c = api.client()
    c.create(Namespace(metadata=ObjectMeta(name="held", finalizers=["example.com/hold"])))
    c.delete(Namespace, "held")
    assert api.wait_for(lambda: api.get("Namespace", "held")["spec"] == {}, timeout=10)
    ns = api.get("Namespace", "held")
    assert ns["status"]["phase"] == "Terminating" and conditions_of(ns) == ALL_DONE
    assert ns["metadata"]["finalizers"] == ["example.com/hold"]
    c.patch(Namespace, "held", {"metadata": {"finalizers": None}}, patch_type=PatchType.MERGE)
    assert api.get("Namespace", "held") is None, "the last finalizer gone, it goes"


def test_an_empty_namespace_goes_too_and_the_clusters_own_stay(api):
    c = api.client()
    c.create(Namespace(metadata=ObjectMeta(name="scratch")))
    api.delete("Namespace", "scratch")                  # the administrator's way, the same
    assert api.wait_for(lambda: api.get("Namespace", "scratch") is None, timeout=10)
    for name in ("default", "kube-system", "kube-public"):
        status = refused(c.delete, Namespace, name)
        assert (status.code, status.message) == (
            403, f'namespaces "{name}" is forbidden: this namespace may not be deleted')
    with pytest.raises(StandInError) as err:
        api.delete("Namespace", "default")
    assert err.value.code == 403
    assert api.get("Namespace", "default")["status"]["phase"] == "Active"


def test_namespace_delay_is_checked():
    with pytest.raises(StandInError) as err:
        ApiStandIn(namespace_delay=-1)
    assert err.value.code == 400 and "namespace_delay" in str(err.value)
