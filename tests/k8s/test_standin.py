"""The API stand-in against the real lightkube client: CRUD, conflicts, the status subresource,
finalizers, list/watch with resourceVersion, bookmarks, 410 Gone, faults, paging, selectors."""

import json
import queue
import threading
import time
from pathlib import Path

import httpx2
import pytest
import yaml
from lightkube import ApiError, operators
from lightkube.generic_resource import create_global_resource
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.core_v1 import NodeStatus, ServicePort, ServiceSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import ConfigMap, Node, Service, ServiceStatus
from lightkube.resources.discovery_v1 import EndpointSlice
from lightkube.types import PatchType, on_error_raise

from pyxlb.errors import PyxlbError
from pyxlb.k8s import objects

from tests.support.standin import KINDS, ApiStandIn, StandInError
from tests.support.standin_discovery import apply_defaults

IPPool = create_global_resource("pyxlb.io", "v1alpha1", "IPPool", "ippools")
ROOT = Path(__file__).resolve().parents[2]


# -- helpers --------------------------------------------------------------------------------


def service(name, namespace="default", **meta):
    return Service(metadata=ObjectMeta(name=name, namespace=namespace, **meta),
                   spec=ServiceSpec(type="LoadBalancer", ports=[ServicePort(port=80)]))


def configmap(name, labels=None, namespace="default", data=None):
    return ConfigMap(metadata=ObjectMeta(name=name, namespace=namespace, labels=labels),
                     data=data or {"k": "v"})


def rv_of(obj) -> int:
    return int(obj.metadata.resourceVersion)


class Collector:
    """Iterates a lightkube watch in a thread; events (or the exception that ended it) come
    out of a queue, so a test never blocks on the stream itself."""

    def __init__(self, iterator):
        self.events: "queue.Queue" = queue.Queue()
        self.thread = threading.Thread(target=self._run, args=(iterator,), daemon=True)
        self.thread.start()

    def _run(self, iterator):
        try:
            for etype, obj in iterator:
                self.events.put((etype, obj))
            self.events.put(("END", None))
        except Exception as exc:  # the test inspects what ended the stream
            self.events.put(("EXC", exc))

    def take(self, n=1, timeout=5.0):
        out = []
        for _ in range(n):
            etype, obj = self.events.get(timeout=timeout)
            assert etype not in ("EXC", "END"), f"watch ended after {out}: {obj!r}"
            out.append((etype, obj))
        return out

    def take_names(self, n=1, timeout=5.0):
        return [(etype, obj.metadata.name) for etype, obj in self.take(n, timeout)]

    def ending(self, timeout=5.0):
        """Skip events until the stream ends; what ended it ("END" or the exception)."""
        while True:
            etype, obj = self.events.get(timeout=timeout)
            if etype == "END":
                return "END"
            if etype == "EXC":
                return obj


@pytest.fixture
def watch(api):
    """watch(iterator) -> Collector; every watch is cut and its thread joined afterwards."""
    collectors = []

    def start(iterator):
        c = Collector(iterator)
        collectors.append(c)
        return c

    yield start
    api.drop_watches()
    for c in collectors:
        c.thread.join(timeout=5)
        assert not c.thread.is_alive(), "a watch thread did not end"


def bookmark_watch(client, res, namespace=None, resource_version=None, timeout=None):
    """A watch with allowWatchBookmarks: lightkube's Client.watch has no parameter for it,
    so this goes one level down, as the agent's informer does."""
    generic = client._client
    br = generic.prepare_request("list", res=res, namespace=namespace, watch=True,
                                 params={"allowWatchBookmarks": "true",
                                         "resourceVersion": resource_version,
                                         "timeoutSeconds": timeout})
    return generic.watch(br, on_error=on_error_raise)


# -- CRUD -------------------------------------------------------------------------------------


def test_service_crud_and_server_owned_fields(api):
    c = api.client()
    before = api.resource_version
    created = c.create(service("web"))
    assert created.kind == "Service" and created.apiVersion == "v1"
    assert rv_of(created) == before + 1 == api.resource_version
    assert created.metadata.uid and created.metadata.generation == 1
    assert created.metadata.creationTimestamp is not None
    assert created.metadata.namespace == "default"

    got = c.get(Service, "web")
    assert got.metadata.uid == created.metadata.uid and got.spec.ports[0].port == 80

    got.spec.ports[0].port = 8080
    replaced = c.replace(got)
    assert replaced.spec.ports[0].port == 8080
    assert rv_of(replaced) == rv_of(created) + 1
    assert replaced.metadata.generation == 2, "a spec change bumps generation"
    assert replaced.metadata.uid == created.metadata.uid

    patched = c.patch(Service, "web", {"metadata": {"labels": {"app": "web"}}})
    assert patched.metadata.labels == {"app": "web"}
    assert patched.metadata.generation == 2, "a metadata change does not"

    with pytest.raises(ApiError) as err:
        c.create(service("web"))
    assert (err.value.status.code, err.value.status.reason) == (409, "AlreadyExists")

    c.delete(Service, "web")
    with pytest.raises(ApiError) as err:
        c.get(Service, "web")
    assert (err.value.status.code, err.value.status.reason) == (404, "NotFound")
    assert 'services "web" not found' == err.value.status.message
    with pytest.raises(ApiError) as err:
        c.delete(Service, "web")
    assert err.value.status.code == 404
    assert api.requests[("create", "Service")] == 2
    assert api.requests[("delete", "Service")] == 2


def test_node_endpointslice_lease_ippool_crud(api):
    c = api.client()
    api.create(objects.namespace("prod"))
    node = c.create(Node(metadata=ObjectMeta(name="n1", labels={"zone": "a"}),
                         status=NodeStatus(addresses=[{"type": "InternalIP",
                                                       "address": "10.0.0.1"}])))
    assert node.metadata.namespace is None, "Nodes are cluster-scoped"
    assert node.status.addresses[0].address == "10.0.0.1", "a Node keeps its status on create"
    assert [n.metadata.name for n in c.list(Node)] == ["n1"]

    eps = c.create(EndpointSlice(
        metadata=ObjectMeta(name="web-abc", namespace="prod",
                            labels={"kubernetes.io/service-name": "web"}),
        addressType="IPv4",
        endpoints=[{"addresses": ["10.244.0.5"], "conditions": {"ready": True},
                    "nodeName": "n1"}]))
    assert eps.endpoints[0].nodeName == "n1" and eps.metadata.namespace == "prod"
    assert c.get(EndpointSlice, "web-abc", namespace="prod").addressType == "IPv4"
    with pytest.raises(ApiError):
        c.get(EndpointSlice, "web-abc", namespace="default")

    lease = c.create(Lease(metadata=ObjectMeta(name="ctl", namespace="pyxlb-system"),
                           spec=LeaseSpec(holderIdentity="a", leaseDurationSeconds=15)))
    lease.spec.holderIdentity = "b"
    assert c.replace(lease).spec.holderIdentity == "b"

    pool = c.create(IPPool(metadata=ObjectMeta(name="pool"),
                           spec={"addresses": ["192.0.2.0/28"]}))
    # the CRD's schema defaults (deploy/crds/ippools.yaml), as a real server answers
    assert pool["spec"] == {"addresses": ["192.0.2.0/28"], "autoAssign": True,
                            "announce": "l2", "avoidBuggyIPs": False}
    assert pool.metadata.uid
    got = c.get(IPPool, "pool")
    got["spec"]["autoAssign"] = False
    assert c.replace(got)["spec"]["autoAssign"] is False
    c.delete(IPPool, "pool")
    c.delete(Node, "n1")
    c.delete(EndpointSlice, "web-abc", namespace="prod")
    assert api.list("IPPool") == [] and api.list("Node") == [] and api.list("EndpointSlice") == []
    assert api.get("Lease", "ctl", "pyxlb-system")["spec"]["holderIdentity"] == "b"


# -- custom resources: their CRD's defaults -----------------------------------------------------


def test_apply_defaults_follows_the_structural_schema_rules():
    schema = {"type": "object", "properties": {
        "spec": {"type": "object", "properties": {
            "mode": {"type": "string", "default": "l2"},
            "given": {"type": "integer", "default": 3},
            "kept": {"type": "string", "nullable": True, "default": "x"},
            "dropped": {"type": "string"},
            "opaque": {"type": "object", "nullable": True},
            "inner": {"type": "object", "default": {},
                      "properties": {"deep": {"type": "boolean", "default": False}}},
            "absent": {"type": "object",
                       "properties": {"never": {"type": "integer", "default": 1}}},
            "list": {"type": "array", "items": {
                "type": "object", "default": {"name": "none"},
                "properties": {"name": {"type": "string"},
                               "weight": {"type": "integer", "default": 1}}}},
            "labels": {"type": "object", "additionalProperties": {
                "type": "string", "default": "on"}}}}}}
    obj = {"metadata": {"name": "x", "labels": None},
           "spec": {"given": 7, "kept": None, "dropped": None, "opaque": None,
                    "list": [{"name": "a"}, None, {"name": "b", "weight": 5}],
                    "labels": {"a": None, "b": "off"}}}
    assert apply_defaults(obj, schema) is obj
    assert obj == {"metadata": {"name": "x", "labels": None},   # metadata is not looked into
                   "spec": {"mode": "l2", "given": 7, "kept": None, "opaque": None,
                            "inner": {"deep": False},           # defaults inside a default
                            "list": [{"name": "a", "weight": 1}, {"name": "none", "weight": 1},
                                     {"name": "b", "weight": 5}],
                            "labels": {"a": "on", "b": "off"}}}
    mode_null = {"spec": {"mode": None}}
    assert apply_defaults(mode_null, schema)["spec"]["mode"] == "l2", "a null not nullable"
    assert apply_defaults({"kind": "X"}, schema) == {"kind": "X"}, "no spec: none made up"
    assert apply_defaults({"spec": {}}, None) == {"spec": {}}


def test_custom_resources_get_their_crds_defaults_on_every_write(api, watch):
    """deploy/crds/: an IPPool's autoAssign (true), announce (l2), avoidBuggyIPs (false); a
    BGPPeer's holdTime (3), bfd (false), ebgpMultihop (0). A write that leaves out only what
    defaults fill back in changes nothing: no new resourceVersion, no event."""
    c = api.client()
    pool = c.create(IPPool(metadata=ObjectMeta(name="pool"),
                           spec={"addresses": ["192.0.2.0/28"], "announce": "bgp"}))
    assert pool["spec"] == {"addresses": ["192.0.2.0/28"], "announce": "bgp",
                            "autoAssign": True, "avoidBuggyIPs": False}
    rv = pool.metadata.resourceVersion
    events = watch(c.watch(IPPool, resource_version=rv))
    # a null sent over the wire is not nullable here: defaulted (or dropped, with no default)
    with httpx2.Client(base_url=api.url, trust_env=False) as h:
        made = h.post("/apis/pyxlb.io/v1alpha1/ippools", json={
            "apiVersion": "pyxlb.io/v1alpha1", "kind": "IPPool", "metadata": {"name": "nulls"},
            "spec": {"addresses": ["192.0.2.16/28"], "autoAssign": None,
                     "serviceSelector": None}})
    assert made.status_code == 201
    assert made.json()["spec"] == {"addresses": ["192.0.2.16/28"], "autoAssign": True,
                                   "announce": "l2", "avoidBuggyIPs": False}
    assert events.take_names() == [("ADDED", "nulls")]

    # removing a defaulted field puts the default back: a no-op, or a change to the default
    c.patch(IPPool, "pool", [{"op": "remove", "path": "/spec/avoidBuggyIPs"}],
            patch_type=PatchType.JSON)
    assert api.get("IPPool", "pool")["metadata"]["resourceVersion"] == rv
    got = c.get(IPPool, "pool")
    del got["spec"]["announce"]
    replaced = c.replace(got)
    assert replaced["spec"]["announce"] == "l2"
    patched = c.patch(IPPool, "pool", {"spec": {"announce": None}}, patch_type=PatchType.MERGE)
    assert patched["spec"]["announce"] == "l2"
    assert patched.metadata.resourceVersion == replaced.metadata.resourceVersion
    assert [(t, o["spec"]["announce"]) for t, o in events.take()] == [("MODIFIED", "l2")]

    peer = api.create({"apiVersion": "pyxlb.io/v1alpha1", "kind": "BGPPeer",
                       "metadata": {"name": "tor"},
                       "spec": {"peerAddress": "192.0.2.1", "peerASN": 65000, "myASN": 65001}})
    assert peer["spec"] == {"peerAddress": "192.0.2.1", "peerASN": 65000, "myASN": 65001,
                            "holdTime": 3, "bfd": False, "ebgpMultihop": 0}
    assert api.create(objects.ip_pool("plain", ["198.51.100.0/28"]))["spec"]["announce"] == "l2"


def test_a_crd_written_later_defaults_what_is_stored_on_read(api, watch):
    """Defaults apply on every read from storage: a CRD that declares a new default shows it
    on the objects stored before, with no write (same resourceVersion, no event); what an
    object says stays."""
    c = api.client()
    c.create(IPPool(metadata=ObjectMeta(name="old"), spec={"addresses": ["192.0.2.0/28"]}))
    c.create(IPPool(metadata=ObjectMeta(name="set"),
                    spec={"addresses": ["192.0.2.16/28"], "priority": 7}))
    before = api.get("IPPool", "old")
    events = watch(c.watch(IPPool, resource_version=str(api.resource_version)))
    crd = yaml.safe_load((ROOT / "deploy" / "crds" / "ippools.yaml").read_text())
    spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec_schema["properties"]["priority"] = {"type": "integer", "default": 100}
    api.create(crd)
    after = c.get(IPPool, "old")
    assert after["spec"]["priority"] == 100 and after["spec"]["announce"] == "l2"
    assert after.metadata.resourceVersion == before["metadata"]["resourceVersion"]
    assert c.get(IPPool, "set")["spec"]["priority"] == 7
    assert c.create(IPPool(metadata=ObjectMeta(name="new"),
                           spec={"addresses": ["192.0.2.32/28"]}))["spec"]["priority"] == 100
    assert events.take_names() == [("ADDED", "new")], "reading with defaults is not a write"


def test_stale_resource_version_is_a_conflict(api):
    a, b = api.client(), api.client()
    a.create(Lease(metadata=ObjectMeta(name="ctl", namespace="default"),
                   spec=LeaseSpec(holderIdentity="nobody")))
    mine, theirs = a.get(Lease, "ctl"), b.get(Lease, "ctl")
    mine.spec.holderIdentity = "a"
    a.replace(mine)
    theirs.spec.holderIdentity = "b"
    with pytest.raises(ApiError) as err:
        b.replace(theirs)
    assert (err.value.status.code, err.value.status.reason) == (409, "Conflict")
    assert "the object has been modified" in err.value.status.message
    # a merge patch carrying the stale resourceVersion is refused the same way
    with pytest.raises(ApiError) as err:
        b.patch(Lease, "ctl", {"metadata": {"resourceVersion": theirs.metadata.resourceVersion},
                               "spec": {"holderIdentity": "b"}}, patch_type=PatchType.MERGE)
    assert err.value.status.code == 409
    assert api.get("Lease", "ctl")["spec"]["holderIdentity"] == "a"
    # without a resourceVersion an update is unconditional
    theirs.metadata.resourceVersion = None
    assert b.replace(theirs).spec.holderIdentity == "b"


def test_an_update_that_changes_nothing_is_not_a_write(api, watch):
    c = api.client()
    svc = c.create(service("web"))
    events = watch(c.watch(Service, resource_version=svc.metadata.resourceVersion))
    again = c.replace(c.get(Service, "web"))
    assert again.metadata.resourceVersion == svc.metadata.resourceVersion
    c.patch(Service, "web", {"spec": {"type": "LoadBalancer"}})
    assert api.resource_version == rv_of(svc)
    c.create(service("marker"))
    assert events.take_names() == [("ADDED", "marker")], "no event for the no-op writes"


def test_generate_name(api):
    c = api.client()
    made = c.create(ConfigMap(metadata=ObjectMeta(generateName="ev-", namespace="default")))
    assert made.metadata.name.startswith("ev-") and len(made.metadata.name) == len("ev-") + 5
    with pytest.raises(ApiError) as err:
        c.create(ConfigMap(metadata=ObjectMeta(namespace="default")))
    assert err.value.status.code == 422


# -- status subresource -------------------------------------------------------------------------


def test_status_subresource_is_separate(api):
    c = api.client()
    svc = service("web")
    svc.status = {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}
    created = c.create(svc)
    assert created.status.loadBalancer.ingress is None, \
        "a created Service drops the status it was given"

    ingress = {"loadBalancer": {"ingress": [{"ip": "192.0.2.7", "ipMode": "VIP"}]}}
    c.patch(ServiceStatus, "web", {"status": ingress, "spec": {"type": "ClusterIP"},
                                   "metadata": {"labels": {"x": "y"}}},
            patch_type=PatchType.MERGE)
    got = api.get("Service", "web")
    assert got["status"] == ingress
    assert got["spec"]["type"] == "LoadBalancer", "/status changes only the status"
    assert "labels" not in got["metadata"]

    main = c.get(Service, "web")
    main.spec.sessionAffinity = "ClientIP"
    main.status = {"loadBalancer": {}}
    c.replace(main)
    got = api.get("Service", "web")
    assert got["spec"]["sessionAffinity"] == "ClientIP"
    assert got["status"] == ingress, "the main resource keeps the stored status"

    as_status = ServiceStatus.from_dict(api.get("Service", "web"))
    as_status.status.loadBalancer.ingress = []
    as_status.spec.sessionAffinity = "None"
    c.replace(as_status)
    got = api.get("Service", "web")
    assert got["status"]["loadBalancer"]["ingress"] == []
    assert got["spec"]["sessionAffinity"] == "ClientIP"

    pool = c.create(IPPool(metadata=ObjectMeta(name="p"), spec={"addresses": []},
                           status={"dropped": True}))
    assert "status" not in pool
    c.patch(IPPool.Status, "p", {"status": {"free": 14}}, patch_type=PatchType.MERGE)
    assert api.get("IPPool", "p")["status"] == {"free": 14}
    assert api.requests[("patch", "IPPool")] == 1 and api.requests[("patch", "Service")] == 1


# -- finalizers ---------------------------------------------------------------------------------


def test_finalizers_block_deletion_until_the_last_is_removed(api, watch):
    c = api.client()
    fin = ["service.kubernetes.io/load-balancer-cleanup", "example.com/other"]
    svc = c.create(service("web", finalizers=fin))
    events = watch(c.watch(Service, resource_version=svc.metadata.resourceVersion))

    c.delete(Service, "web")
    kept = c.get(Service, "web")
    assert kept.metadata.deletionTimestamp is not None and kept.metadata.finalizers == fin
    [(etype, obj)] = events.take()
    assert etype == "MODIFIED" and obj.metadata.deletionTimestamp is not None
    c.delete(Service, "web")    # a second delete changes nothing
    assert c.get(Service, "web").metadata.resourceVersion == kept.metadata.resourceVersion

    with pytest.raises(ApiError) as err:
        c.patch(Service, "web", {"metadata": {"finalizers": fin + ["late/one"]}},
                patch_type=PatchType.MERGE)
    assert (err.value.status.code, err.value.status.reason) == (422, "Invalid")
    assert "no new finalizers" in err.value.status.message

    c.patch(Service, "web", {"metadata": {"finalizers": fin[:1]}}, patch_type=PatchType.MERGE)
    assert events.take()[0][0] == "MODIFIED"
    assert c.get(Service, "web").metadata.finalizers == fin[:1]
    c.patch(Service, "web", [{"op": "remove", "path": "/metadata/finalizers"}],
            patch_type=PatchType.JSON)
    [(etype, obj)] = events.take()
    assert etype == "DELETED" and obj.metadata.name == "web"
    assert rv_of(obj) == api.resource_version
    assert api.get("Service", "web") is None

    # without finalizers a delete is immediate
    c.create(service("plain"))
    c.delete(Service, "plain")
    assert [e for e, _ in events.take(2)] == ["ADDED", "DELETED"]
    assert api.get("Service", "plain") is None


def test_admin_delete_and_update_honour_finalizers(api):
    api.create({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web", "namespace": "default", "finalizers": ["a/b"]},
                "spec": {"ports": [{"port": 80}]}})
    api.delete("Service", "web")
    obj = api.get("Service", "web")
    assert obj["metadata"]["deletionTimestamp"]
    obj["metadata"]["finalizers"] = []
    api.update(obj)
    assert api.get("Service", "web") is None


# -- list and watch -------------------------------------------------------------------------------


def test_watch_from_a_list_gets_exactly_the_later_events_in_order(api, watch):
    c = api.client()
    for name in ("a", "b"):
        c.create(service(name))
    c.create(configmap("unrelated"))
    listed = c.list(Service, namespace="*")
    assert sorted(s.metadata.name for s in listed) == ["a", "b"]
    since = listed.resourceVersion
    assert int(since) == api.resource_version

    c.patch(Service, "a", {"metadata": {"labels": {"v": "2"}}})
    api.create(objects.namespace("x"))
    api.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "c", "namespace": "x"},
                "spec": {"ports": [{"port": 80}]}})
    c.create(configmap("also-unrelated"))
    c.delete(Service, "b")

    events = watch(c.watch(Service, namespace="*", resource_version=since))
    got = events.take(3)
    assert [(e, o.metadata.name) for e, o in got] == [("MODIFIED", "a"), ("ADDED", "c"),
                                                       ("DELETED", "b")]
    rvs = [rv_of(o) for _, o in got]
    assert rvs == sorted(rvs) and rvs[0] > int(since)
    api.patch("Service", "c", {"spec": {"type": "NodePort"}}, namespace="x")
    assert events.take_names() == [("MODIFIED", "c")], "then live events, nothing else"


def test_watch_without_resource_version_starts_with_what_exists(api, watch):
    c = api.client()
    for ns in ("one", "two"):
        api.create(objects.namespace(ns))
    c.create(service("a", namespace="one"))
    c.create(service("b", namespace="two"))
    events = watch(c.watch(Service, namespace="*"))
    assert sorted(events.take_names(2)) == [("ADDED", "a"), ("ADDED", "b")]
    only_two = watch(c.watch(Service, namespace="two", resource_version="0"))
    assert only_two.take_names() == [("ADDED", "b")]
    c.create(service("c", namespace="two"))
    assert events.take_names() == [("ADDED", "c")]
    assert only_two.take_names() == [("ADDED", "c")]


def test_label_filtered_watch_sees_objects_enter_and_leave(api, watch):
    c = api.client()
    # from a known version: a watch still connecting when the writes begin would start
    # from their result instead of seeing each of them
    events = watch(c.watch(ConfigMap, labels={"app": "web"},
                           resource_version=str(api.resource_version)))
    c.create(configmap("cm", labels={"app": "web"}))
    c.patch(ConfigMap, "cm", {"metadata": {"labels": {"app": "db"}}})
    c.create(configmap("other", labels={"app": "db"}))
    c.patch(ConfigMap, "cm", {"metadata": {"labels": {"app": "web"}}})
    c.patch(ConfigMap, "cm", {"data": {"k": "changed"}})
    assert events.take_names(4) == [("ADDED", "cm"), ("DELETED", "cm"), ("ADDED", "cm"),
                                    ("MODIFIED", "cm")]
    c.create(configmap("marker", labels={"app": "web"}))
    assert events.take_names() == [("ADDED", "marker")], "'other' never matched"


def test_concurrent_writers_are_seen_in_order_without_gaps(api, watch):
    names = ["w0", "w1", "w2"]
    for name in names:
        api.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}})
    since = api.resource_version
    events = watch(api.client().watch(ConfigMap, resource_version=str(since)))

    def writer(name):
        c = api.client()
        for i in range(60):
            c.patch(ConfigMap, name, {"data": {"i": str(i)}})

    threads = [threading.Thread(target=writer, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    got = events.take(180)
    assert [rv_of(o) for _, o in got] == list(range(since + 1, since + 181))
    for name in names:
        assert [o.data["i"] for _, o in got if o.metadata.name == name] == \
            [str(i) for i in range(60)]


def test_bookmarks_carry_the_current_resource_version():
    with ApiStandIn(bookmark_interval=0.1) as api:
        c = api.client()
        svc = c.create(service("web"))
        c.create(configmap("elsewhere"))
        events = Collector(bookmark_watch(c, Service, namespace="default",
                                          resource_version=svc.metadata.resourceVersion))
        [(etype, obj)] = events.take()
        assert etype == "BOOKMARK"
        assert rv_of(obj) == api.resource_version, "bookmarks move past other kinds' writes"
        assert obj.metadata.name is None
        c.patch(Service, "web", {"metadata": {"labels": {"a": "b"}}})
        etype, obj = events.take()[0]
        while etype == "BOOKMARK":  # a bookmark may come first, never past the event
            assert rv_of(obj) < api.resource_version
            etype, obj = events.take()[0]
        assert etype == "MODIFIED"

        # a kind with required top-level fields still decodes (they come as zero values)
        slices = Collector(bookmark_watch(c, EndpointSlice, namespace="*"))
        etype, obj = slices.take()[0]
        assert etype == "BOOKMARK" and obj.addressType == ""
        assert api.drop_watches() == 2
        for collector in (events, slices):
            assert isinstance(collector.ending(), httpx2.TransportError)
            collector.thread.join(timeout=5)


def test_no_bookmarks_unless_asked(api, watch):
    api.bookmark_interval = 0.05
    c = api.client()
    events = watch(c.watch(Service))
    time.sleep(0.3)
    c.create(service("marker"))
    assert events.take_names() == [("ADDED", "marker")]


def test_compacted_history_is_410_gone(api, watch):
    c = api.client()
    first = c.create(service("a"))
    c.create(service("b"))
    api.compact()
    with pytest.raises(ApiError) as err:
        next(iter(c.watch(Service, resource_version=first.metadata.resourceVersion)))
    assert (err.value.status.code, err.value.status.reason) == (410, "Expired")
    assert "too old resource version" in err.value.status.message

    # from the current resourceVersion it still works
    events = watch(c.watch(Service, resource_version=str(api.resource_version)))
    c.create(service("c"))
    assert events.take_names() == [("ADDED", "c")]


def test_expired_watch_on_the_wire_is_200_with_one_error_event(api):
    api.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})
    api.compact()
    with httpx2.Client(base_url=api.url, trust_env=False) as h:
        with h.stream("GET", "/api/v1/configmaps", params={"watch": "true",
                                                             "resourceVersion": "1"}) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"] == "application/json"
            lines = list(resp.iter_lines())
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["type"] == "ERROR"
    assert event["object"]["kind"] == "Status" and event["object"]["code"] == 410
    assert event["object"]["reason"] == "Expired"


def test_bounded_history_expires_old_resource_versions():
    with ApiStandIn(history=2) as api:
        rvs = [int(api.create({"apiVersion": "v1", "kind": "ConfigMap",
                               "metadata": {"name": f"c{i}"}})["metadata"]["resourceVersion"])
               for i in range(4)]
        c = api.client()
        with pytest.raises(ApiError) as err:
            next(iter(c.watch(ConfigMap, resource_version=str(rvs[0]))))
        assert err.value.status.code == 410
        events = Collector(c.watch(ConfigMap, resource_version=str(rvs[1])))
        assert events.take_names(2) == [("ADDED", "c2"), ("ADDED", "c3")]
        api.drop_watches()
        events.thread.join(timeout=5)


def test_dropped_watch_resumes_from_the_last_seen_version_without_a_gap(api, watch):
    c = api.client()
    start = str(api.resource_version)
    first = watch(c.watch(Service, namespace="*", resource_version=start))
    c.create(service("a"))
    [(_, seen)] = first.take()
    assert api.drop_watches() == 1
    assert isinstance(first.ending(), httpx2.TransportError), "a cut stream is an error"
    # changes while nobody watches
    c.create(service("b"))
    c.patch(Service, "a", {"metadata": {"labels": {"x": "1"}}})
    c.delete(Service, "b")
    resumed = watch(c.watch(Service, namespace="*",
                            resource_version=seen.metadata.resourceVersion))
    assert resumed.take_names(3) == [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]
    assert api.requests[("watch", "Service")] == 2


def test_timeout_seconds_ends_the_stream_cleanly(api, watch):
    with httpx2.Client(base_url=api.url, trust_env=False) as h:
        began = time.monotonic()
        with h.stream("GET", "/api/v1/namespaces/default/services",
                      params={"watch": "1", "timeoutSeconds": "1"}) as resp:
            lines = list(resp.iter_lines())   # ends without an error
        took = time.monotonic() - began
    assert lines == [] and 0.9 <= took < 3
    # lightkube takes a clean end as "ask again", from the last version it saw
    c = api.client()
    events = watch(c.watch(Service, server_timeout=1))
    assert api.wait_for(lambda: api.requests[("watch", "Service")] >= 3, timeout=5)
    c.create(service("after"))
    assert events.take_names() == [("ADDED", "after")]


# -- faults -----------------------------------------------------------------------------------------


def test_down_means_connection_errors_then_recovery(api, watch):
    c = api.client()
    c.create(service("web"))
    open_watch = watch(c.watch(Service))
    assert open_watch.take_names() == [("ADDED", "web")]

    api.set_down(True)
    assert isinstance(open_watch.ending(), httpx2.TransportError)
    with pytest.raises(httpx2.TransportError):
        c.get(Service, "web")
    with pytest.raises(httpx2.TransportError):
        next(iter(c.watch(Service)))
    with pytest.raises(httpx2.TransportError):
        api.client().list(Service).__iter__().__next__()
    api.create({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "while-down", "namespace": "default"},
                "spec": {"ports": [{"port": 80}]}})

    api.set_down(False)
    assert c.get(Service, "web").metadata.name == "web"
    assert sorted(s.metadata.name for s in c.list(Service)) == ["web", "while-down"]


def test_fail_next_answers_writes_with_the_given_code(api):
    c = api.client()
    c.create(service("web"))
    c.create(Node(metadata=ObjectMeta(name="n1")))
    api.fail_next(2, 409, kind="Service", verb="update")
    for _ in range(2):
        svc = c.get(Service, "web")
        svc.metadata.labels = {"try": "1"}
        node = c.get(Node, "n1")
        node.metadata.labels = {"try": "1"}
        assert c.replace(node).metadata.labels == {"try": "1"}, "other kinds are not failed"
        with pytest.raises(ApiError) as err:
            c.replace(svc)
        assert (err.value.status.code, err.value.status.reason) == (409, "Conflict")
        c.patch(Service, "web", {"metadata": {"annotations": {"patched": "yes"}}})
    assert "labels" not in api.get("Service", "web")["metadata"], "a failed write changed nothing"
    assert c.replace(svc).metadata.labels == {"try": "1"}

    api.fail_next(1, 500, verb="any")
    with pytest.raises(ApiError) as err:
        c.delete(Node, "n1")
    assert (err.value.status.code, err.value.status.reason) == (500, "InternalError")
    assert api.get("Node", "n1") is not None
    api.fail_next(1, 503, verb="create")
    api.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "admin"}})
    with pytest.raises(ApiError) as err:
        c.create(Node(metadata=ObjectMeta(name="n2")))
    assert err.value.status.code == 503 and api.get("Node", "n2") is None
    c.create(Node(metadata=ObjectMeta(name="n2")))
    with pytest.raises(StandInError):
        api.fail_next(1, verb="get")


# -- list: pages and selectors -------------------------------------------------------------------------


def test_pagination_with_lightkube_chunks(api):
    api.create(objects.namespace("ns"))
    for i in range(25):
        api.create({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": f"cm-{i:02d}", "namespace": "ns"}})
    c = api.client()
    items = c.list(ConfigMap, namespace="ns", chunk_size=10)
    assert [o.metadata.name for o in items] == [f"cm-{i:02d}" for i in range(25)]
    assert api.requests[("list", "ConfigMap")] == 3
    assert int(items.resourceVersion) == api.resource_version


def test_pages_come_from_one_snapshot(api):
    for name in ("a", "b", "c", "d"):
        api.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}})
    with httpx2.Client(base_url=api.url, trust_env=False) as h:
        first = h.get("/api/v1/namespaces/default/configmaps", params={"limit": 2}).json()
        assert [o["metadata"]["name"] for o in first["items"]] == ["a", "b"]
        assert first["metadata"]["remainingItemCount"] == 2
        api.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "e"}})
        api.delete("ConfigMap", "d")
        second = h.get("/api/v1/namespaces/default/configmaps",
                       params={"limit": 2, "continue": first["metadata"]["continue"]}).json()
        assert [o["metadata"]["name"] for o in second["items"]] == ["c", "d"]
        assert second["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
        assert "continue" not in second["metadata"]
        third = h.get("/api/v1/namespaces/default/configmaps", params={"limit": 2}).json()
        api.compact()
        gone = h.get("/api/v1/namespaces/default/configmaps",
                     params={"limit": 2, "continue": third["metadata"]["continue"]})
        assert gone.status_code == 410 and gone.json()["reason"] == "Expired"


def test_label_and_field_selectors(api):
    labels = {"a": {"app": "web", "tier": "front"}, "b": {"app": "db", "tier": "back"},
              "c": {"app": "web"}, "d": {}}
    for ns in ("one", "two"):
        api.create(objects.namespace(ns))
    for name, lab in labels.items():
        api.create({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": name, "namespace": "one" if name != "d" else "two",
                                 "labels": lab}})
    c = api.client()

    def names(**kw):
        return sorted(o.metadata.name for o in c.list(ConfigMap, namespace="*", **kw))

    assert names(labels={"app": "web"}) == ["a", "c"]
    assert names(labels={"app": "web", "tier": "front"}) == ["a"]
    assert names(labels={"app": operators.not_equal("web")}) == ["b", "d"]
    assert names(labels={"tier": operators.in_(["front", "back"])}) == ["a", "b"]
    assert names(labels={"tier": operators.not_in(["front"])}) == ["b", "c", "d"]
    assert names(labels={"tier": None}) == ["a", "b"]
    assert names(labels={"tier": operators.not_exists()}) == ["c", "d"]
    assert names(fields={"metadata.name": "b"}) == ["b"]
    assert names(fields={"metadata.namespace": operators.not_equal("one")}) == ["d"]
    assert names(labels={"app": "web"}, fields={"metadata.name": operators.not_equal("a")}) == ["c"]
    with httpx2.Client(base_url=api.url, trust_env=False) as h:
        raw = h.get("/api/v1/configmaps",
                    params={"labelSelector": "tier in (front, back),app!=db"}).json()
        assert [o["metadata"]["name"] for o in raw["items"]] == ["a"]
    with pytest.raises(ApiError) as err:
        list(c.list(ConfigMap, fields={"spec.nodeName": "x"}))
    assert err.value.status.code == 400
    with pytest.raises(ApiError) as err:
        list(c.list(ConfigMap, labels={"app": operators.in_(["(x"])}))
    assert err.value.status.code == 400


# -- patches ------------------------------------------------------------------------------------------


def test_json_patch_and_merge_patches(api):
    c = api.client()
    c.create(configmap("cm", labels={"keep": "1", "drop": "1"}, data={"a": "1", "b": "2"}))
    got = c.patch(ConfigMap, "cm", [
        {"op": "test", "path": "/data/a", "value": "1"},
        {"op": "add", "path": "/metadata/labels/new~1key", "value": "x"},
        {"op": "replace", "path": "/data/b", "value": "3"},
        {"op": "remove", "path": "/metadata/labels/drop"},
        {"op": "copy", "from": "/data/a", "path": "/data/c"},
        {"op": "move", "from": "/data/a", "path": "/data/d"},
    ], patch_type=PatchType.JSON)
    assert got.metadata.labels == {"keep": "1", "new/key": "x"}
    assert got.data == {"b": "3", "c": "1", "d": "1"}

    before = api.resource_version
    for bad in ([{"op": "test", "path": "/data/b", "value": "nope"},
                 {"op": "replace", "path": "/data/b", "value": "never"}],
                [{"op": "remove", "path": "/data/missing"}]):
        with pytest.raises(ApiError) as err:
            c.patch(ConfigMap, "cm", bad, patch_type=PatchType.JSON)
        assert (err.value.status.code, err.value.status.reason) == (422, "Invalid")
    assert api.resource_version == before and api.get("ConfigMap", "cm")["data"]["b"] == "3"

    # strategic merge: null removes (tests/k8s/test_kubectl.py covers merge keys, directives)
    got = c.patch(ConfigMap, "cm", {"data": {"c": None}, "metadata": {"finalizers": ["x/y"]}})
    assert got.data == {"b": "3", "d": "1"}
    got = c.patch(ConfigMap, "cm", {"metadata": {"finalizers": ["z/w"]}},
                  patch_type=PatchType.MERGE)
    assert got.metadata.finalizers == ["z/w"]
    with pytest.raises(ApiError) as err:
        c.patch(ConfigMap, "cm", {"data": {}}, patch_type=PatchType.APPLY, field_manager="t")
    assert err.value.status.code == 400, "an apply patch is a whole object, with its kind"


# -- the wire and the administrator API ----------------------------------------------------------------


def test_errors_are_status_objects(api):
    with httpx2.Client(base_url=api.url, trust_env=False) as h:
        cases = [
            ("GET", "/api/v1/pods", None, 404, "NotFound"),
            ("GET", "/api/v1/namespaces/default/nodes", None, 404, "NotFound"),
            ("GET", "/api/v1/services/web", None, 404, "NotFound"),
            ("POST", "/api/v1/services", b"{}", 405, "MethodNotAllowed"),
            ("DELETE", "/api/v1/namespaces/default/services/web/status", None, 405,
             "MethodNotAllowed"),
            ("POST", "/api/v1/namespaces/default/services", b"{not json", 400, "BadRequest"),
            ("POST", "/api/v1/namespaces/default/services",
             b'{"kind":"Node","apiVersion":"v1","metadata":{"name":"x"}}', 400, "BadRequest"),
            ("GET", "/api/v1/services", None, 200, None),
        ]
        for method, path, body, code, reason in cases:
            resp = h.request(method, path, content=body)
            assert resp.status_code == code, (method, path, resp.text)
            assert resp.headers["content-type"] == "application/json"
            if reason:
                status = resp.json()
                assert (status["kind"], status["status"], status["reason"], status["code"]) == \
                    ("Status", "Failure", reason, code), (method, path)
        listed = h.get("/apis/discovery.k8s.io/v1/endpointslices").json()
        assert (listed["kind"], listed["apiVersion"]) == ("EndpointSliceList", "discovery.k8s.io/v1")
        assert listed["items"] == []
        assert listed["metadata"]["resourceVersion"] == str(api.resource_version)


def test_admin_api(api):
    made = api.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                       "spec": {"ports": [{"port": 80}]}, "status": {"kept": True}})
    assert made["metadata"]["namespace"] == "default"
    assert made["status"] == {"kept": True, "loadBalancer": {}}, "status kept (and defaulted)"
    copy = api.get("Service", "web")
    copy["spec"]["ports"][0]["port"] = 81
    assert api.get("Service", "web")["spec"]["ports"][0]["port"] == 80, "get returns a copy"

    stale = dict(copy, metadata=dict(copy["metadata"], resourceVersion="1"))
    with pytest.raises(StandInError) as err:
        api.update(stale)
    assert err.value.code == 409 and isinstance(err.value, PyxlbError)
    updated = api.update(copy)
    assert updated["spec"]["ports"][0]["port"] == 81 and updated["status"]["kept"] is True
    assert api.patch("Service", "web", {"status": None})["metadata"]["name"] == "web"
    assert api.get("Service", "web")["status"] == {"loadBalancer": {}}, \
        "a Service's status is never absent"

    api.create({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e1"},
                "involvedObject": {"kind": "Service", "name": "web"}})
    api.create({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e2"},
                "eventTime": "2024-01-01T00:00:00.000000Z", "reason": "Allocated"})
    assert sorted(e["metadata"]["name"] for e in api.list("Event")) == ["e1", "e2"]
    assert [e["metadata"]["name"] for e in api.list("Event", api_version="events.k8s.io/v1")] == ["e2"]
    assert api.get("Event", "e2") is None and api.get("Event", "e2", api_version="events.k8s.io/v1")
    assert api.list("Service", namespace="other") == []

    with pytest.raises(StandInError, match="unknown kind 'Pod'"):
        api.get("Pod", "x")
    with pytest.raises(StandInError) as err:
        api.delete("Service", "missing")
    assert err.value.code == 404 and 'services "missing" not found' in str(err.value)
    with pytest.raises(StandInError) as err:
        api.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                    "spec": {"ports": [{"port": 80}]}})
    assert err.value.code == 409


def test_every_kind_round_trips_over_http(api):
    api.create(objects.namespace("ns"))
    # what the API server requires of the kinds that have required fields
    required = {"Service": {"spec": {"ports": [{"port": 80}]}},
                "EndpointSlice": {"addressType": "IPv4"}}
    before = {k: api.list(k.kind, api_version=k.api_version) for k in KINDS}
    with httpx2.Client(base_url=api.url, trust_env=False) as h:
        for kind in KINDS:
            base = f"/api/{kind.version}" if not kind.group else f"/apis/{kind.group}/{kind.version}"
            coll = f"{base}/namespaces/ns/{kind.plural}" if kind.namespaced else f"{base}/{kind.plural}"
            body = {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": {"name": "x"},
                    **required.get(kind.kind, {})}
            assert h.post(coll, json=body).status_code == 201, kind
            got = h.get(f"{coll}/x").json()
            assert (got["kind"], got["apiVersion"]) == (kind.kind, kind.api_version)
            listed = h.get(f"{base}/{kind.plural}").json()["items"]
            assert "x" in [o["metadata"]["name"] for o in listed]
            assert h.delete(f"{coll}/x").status_code == 200
    # the Namespace "x" goes when the namespace controller gets to it
    assert api.wait_for(lambda: all(api.list(k.kind, api_version=k.api_version) == before[k]
                                    for k in KINDS))


def test_stop_leaves_no_threads_or_connections():
    def ours():
        return [t for t in threading.enumerate() if t.name.startswith("api-standin")]

    assert ours() == []
    with ApiStandIn() as api:
        c = api.client()
        c.create(service("web"))
        events = Collector(c.watch(Service))
        events.take()
        assert len(ours()) >= 3     # the server, a connection, the namespace controller
        url = api.url
    events.thread.join(timeout=5)
    assert not events.thread.is_alive()
    assert ours() == []
    with pytest.raises(httpx2.TransportError):
        httpx2.get(url + "/healthz", trust_env=False)


def test_a_stalled_watch_holds_its_events_in_order_until_resumed():
    """stall_watches: the matching watch (this client's token, this namespace) delivers
    nothing, bookmarks included, while another client's watch and the slow client's other
    watches go on; resume_watches sends what was held, in order."""
    with ApiStandIn(bookmark_interval=0.05) as api:
        for name in ("slow", "fast"):
            api.create({"apiVersion": "v1", "kind": "ServiceAccount",
                        "metadata": {"name": name, "namespace": "default"}})
        api.create(objects.namespace("shop"))
        slow_token = api.issue_token("default", "slow")
        slow, fast = api.client_for(slow_token), api.client_for(api.issue_token("default", "fast"))
        api.stall_watches("Service", namespace="shop", token=slow_token)
        stalled = Collector(bookmark_watch(slow, Service, namespace="shop"))
        other_ns = Collector(slow.watch(Service, namespace="default"))
        other = Collector(fast.watch(Service, namespace="shop"))
        time.sleep(0.2)
        admin = api.client()
        for name in ("a", "b"):
            admin.create(service(name, "shop"))
        admin.create(service("c"))
        assert other.take_names(2) == [("ADDED", "a"), ("ADDED", "b")]
        assert other_ns.take_names() == [("ADDED", "c")]
        time.sleep(0.3)
        assert stalled.events.empty(), "a stalled watch sent something (a bookmark?)"

        assert api.resume_watches() == 2
        # (no bookmark can pass them: one is sent only when nothing is queued)
        assert stalled.take_names(2) == [("ADDED", "a"), ("ADDED", "b")]
        assert api.drop_watches() == 3
        for c in (stalled, other_ns, other):
            c.ending()
            c.thread.join(timeout=5)
