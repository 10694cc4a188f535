"""The API stand-in's protobuf reader (tests/support/standin_proto.py, its schema tables in
tests/support/standin_protobuf.py) on the bodies the real kubectl 1.32 sent, and the stand-in
answering protobuf requests over HTTP.

``SENT`` holds request bodies captured from /usr/bin/kubectl (the command that sent each is its
key, ``kubectl`` left out). ``DECODED`` is what each reads as: the JSON kubectl itself prints for
the same command with ``--dry-run=client -o json`` (key order included: the order the server
writes), and for ``create token`` and ``auth`` the JSON of the same Go structs.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess

import httpx2
import pytest

from tests.support import standin_proto as proto
from tests.support.standin_protobuf import FAMILIES, KINDS, MESSAGES, NOT_DECODED

PROTOBUF = "application/vnd.kubernetes.protobuf"

# The request bodies kubectl 1.32 sent, by the command that sent them (hex).
SENT = {
    "create namespace shop":
        "6b3873000a0f0a02763112094e616d657370616365121c0a140a0473686f7012001a0022002a003200380042"
        "0012001a020a001a002200",
    "create configmap conf --from-literal=mode=fast --from-file=blob.bin":
        "6b3873000a0f0a0276311209436f6e6669674d617012390a140a04636f6e6612001a0022002a003200380042"
        "00120c0a046d6f64651204666173741a130a08626c6f622e62696e120700ff7079786c621a002200",
    "create secret generic creds --from-literal=user=admin":
        "6b3873000a0c0a027631120653656372657412280a150a05637265647312001a0022002a0032003800420012"
        "0d0a0475736572120561646d696e1a001a002200",
    "create serviceaccount robot":
        "6b3873000a140a027631120e536572766963654163636f756e7412170a150a05726f626f7412001a0022002a"
        "003200380042001a002200",
    "create deployment web --image=nginx:1 --image=busybox:1 --port=8080 --replicas=0":
        "6b3873000a150a07617070732f7631120a4465706c6f796d656e7412e6010a1f0a0377656212001a0022002a"
        "003200380042005a0a0a03617070120377656212b4010800120c0a0a0a0361707012037765621a99010a1c0a"
        "0012001a0022002a003200380042005a0a0a036170701203776562127912310a056e67696e7812076e67696e"
        "783a312a00320b0a00100018903f22002a0042006a007200800100880100900100a2010012280a0762757379"
        "626f78120962757379626f783a312a0042006a007200800100880100900100a201001a00320042004a005200"
        "5800600068008201008a01009a0100c2010022020a00280038001a0c0800100018002000280038001a002200",
    "create deployment sleeper --image=busybox:1 -- sleep 10":
        "6b3873000a150a07617070732f7631120a4465706c6f796d656e7412cd010a270a07736c656570657212001a"
        "0022002a003200380042005a0e0a036170701207736c6565706572129301080112100a0e0a03617070120773"
        "6c65657065721a750a200a0012001a0022002a003200380042005a0e0a036170701207736c65657065721251"
        "12330a0762757379626f78120962757379626f783a311a05736c6565701a0231302a0042006a007200800100"
        "880100900100a201001a00320042004a0052005800600068008201008a01009a0100c2010022020a00280038"
        "001a0c0800100018002000280038001a002200",
    "create service loadbalancer web --tcp=80:8080":
        "6b3873000a0d0a027631120753657276696365126c0a1f0a0377656212001a0022002a003200380042005a0a"
        "0a03617070120377656212450a1b0a0738302d38303830120354435018502207080010903f1a002800120a0a"
        "0361707012037765621a00220c4c6f616442616c616e6365723a00420052005a00600068001a020a001a0022"
        "00",
    "create service nodeport web2 --tcp=80:http --node-port=30080":
        "6b3873000a0d0a02763112075365727669636512700a210a047765623212001a0022002a003200380042005a"
        "0b0a0361707012047765623212470a200a0738302d6874747012035443501850220a080110001a0468747470"
        "2880eb01120b0a036170701204776562321a0022084e6f6465506f72743a00420052005a00600068001a020a"
        "001a002200",
    "create service clusterip db --clusterip=None":
        "6b3873000a0d0a027631120753657276696365124d0a1d0a02646212001a0022002a003200380042005a090a"
        "0361707012026462122812090a03617070120264621a044e6f6e652209436c757374657249503a0042005200"
        "5a00600068001a020a001a002200",
    "create token robot --duration=2h --audience=a1 --audience=a2":
        "6b3873000a280a1861757468656e7469636174696f6e2e6b38732e696f2f7631120c546f6b656e5265717565"
        "737412250a100a0012001a0022002a00320038004200120b0a0261310a02613220a0381a040a0012001a0022"
        "00",
    "create role reader --verb=get,list --resource=services,deployments.apps --resource-name=web":
        "6b3873000a240a1c726261632e617574686f72697a6174696f6e2e6b38732e696f2f76311204526f6c65125b"
        "0a160a0672656164657212001a0022002a00320038004200121c0a036765740a046c69737412001a08736572"
        "7669636573220377656212230a036765740a046c6973741204617070731a0b6465706c6f796d656e74732203"
        "7765621a002200",
    "create clusterrole agg --aggregation-rule=example.com/agg=true":
        "6b3873000a2b0a1c726261632e617574686f72697a6174696f6e2e6b38732e696f2f7631120b436c75737465"
        "72526f6c6512320a130a0361676712001a0022002a003200380042001a1b0a190a170a0f6578616d706c652e"
        "636f6d2f6167671204747275651a002200",
    "create rolebinding robot-reads --role=reader --serviceaccount=default:robot --group=ops":
        "6b3873000a2b0a1c726261632e617574686f72697a6174696f6e2e6b38732e696f2f7631120b526f6c654269"
        "6e64696e671297010a1b0a0b726f626f742d726561647312001a0022002a0032003800420012290a0547726f"
        "75701219726261632e617574686f72697a6174696f6e2e6b38732e696f1a036f7073220012220a0e53657276"
        "6963654163636f756e7412001a05726f626f74220764656661756c741a290a19726261632e617574686f7269"
        "7a6174696f6e2e6b38732e696f1204526f6c651a067265616465721a002200",
    "create clusterrolebinding bob-agg --clusterrole=agg --user=bob":
        "6b3873000a320a1c726261632e617574686f72697a6174696f6e2e6b38732e696f2f76311212436c75737465"
        "72526f6c6542696e64696e6712720a170a07626f622d61676712001a0022002a0032003800420012280a0455"
        "7365721219726261632e617574686f72697a6174696f6e2e6b38732e696f1a03626f6222001a2d0a19726261"
        "632e617574686f72697a6174696f6e2e6b38732e696f120b436c7573746572526f6c651a036167671a002200",
    "auth can-i list services -n shop":
        "6b3873000a320a17617574686f72697a6174696f6e2e6b38732e696f2f7631121753656c665375626a656374"
        "416363657373526576696577123e0a100a0012001a0022002a0032003800420012200a1e0a0473686f701204"
        "6c6973741a0022002a08736572766963657332003a001a08080012001a0020001a002200",
    "auth can-i get /healthz":
        "6b3873000a320a17617574686f72697a6174696f6e2e6b38732e696f2f7631121753656c665375626a656374"
        "416363657373526576696577122f0a100a0012001a0022002a003200380042001211120f0a082f6865616c74"
        "687a12036765741a08080012001a0020001a002200",
    "auth whoami":
        "6b3873000a2d0a1861757468656e7469636174696f6e2e6b38732e696f2f7631121153656c665375626a6563"
        "74526576696577121a0a100a0012001a0022002a0032003800420012060a040a0012001a002200",
}

# What each reads as.
DECODED = {
    "create namespace shop":
        {"kind": "Namespace",
         "apiVersion": "v1",
         "metadata": {"name": "shop", "creationTimestamp": None},
         "spec": {},
         "status": {}},
    "create configmap conf --from-literal=mode=fast --from-file=blob.bin":
        {"kind": "ConfigMap",
         "apiVersion": "v1",
         "metadata": {"name": "conf", "creationTimestamp": None},
         "data": {"mode": "fast"},
         "binaryData": {"blob.bin": "AP9weXhsYg=="}},
    "create secret generic creds --from-literal=user=admin":
        {"kind": "Secret",
         "apiVersion": "v1",
         "metadata": {"name": "creds", "creationTimestamp": None},
         "data": {"user": "YWRtaW4="}},
    "create serviceaccount robot":
        {"kind": "ServiceAccount",
         "apiVersion": "v1",
         "metadata": {"name": "robot", "creationTimestamp": None}},
    "create deployment web --image=nginx:1 --image=busybox:1 --port=8080 --replicas=0":
        {"kind": "Deployment",
         "apiVersion": "apps/v1",
         "metadata": {"name": "web", "creationTimestamp": None, "labels": {"app": "web"}},
         "spec": {"replicas": 0,
                  "selector": {"matchLabels": {"app": "web"}},
                  "template": {"metadata": {"creationTimestamp": None,
                                            "labels": {"app": "web"}},
                               "spec": {"containers": [{"name": "nginx",
                                                        "image": "nginx:1",
                                                        "ports": [{"containerPort": 8080}],
                                                        "resources": {}},
                                                       {"name": "busybox",
                                                        "image": "busybox:1",
                                                        "resources": {}}]}},
                  "strategy": {}},
         "status": {}},
    "create deployment sleeper --image=busybox:1 -- sleep 10":
        {"kind": "Deployment",
         "apiVersion": "apps/v1",
         "metadata": {"name": "sleeper",
                      "creationTimestamp": None,
                      "labels": {"app": "sleeper"}},
         "spec": {"replicas": 1,
                  "selector": {"matchLabels": {"app": "sleeper"}},
                  "template": {"metadata": {"creationTimestamp": None,
                                            "labels": {"app": "sleeper"}},
                               "spec": {"containers": [{"name": "busybox",
                                                        "image": "busybox:1",
                                                        "command": ["sleep", "10"],
                                                        "resources": {}}]}},
                  "strategy": {}},
         "status": {}},
    "create service loadbalancer web --tcp=80:8080":
        {"kind": "Service",
         "apiVersion": "v1",
         "metadata": {"name": "web", "creationTimestamp": None, "labels": {"app": "web"}},
         "spec": {"ports": [{"name": "80-8080",
                             "protocol": "TCP",
                             "port": 80,
                             "targetPort": 8080}],
                  "selector": {"app": "web"},
                  "type": "LoadBalancer"},
         "status": {"loadBalancer": {}}},
    "create service nodeport web2 --tcp=80:http --node-port=30080":
        {"kind": "Service",
         "apiVersion": "v1",
         "metadata": {"name": "web2", "creationTimestamp": None, "labels": {"app": "web2"}},
         "spec": {"ports": [{"name": "80-http",
                             "protocol": "TCP",
                             "port": 80,
                             "targetPort": "http",
                             "nodePort": 30080}],
                  "selector": {"app": "web2"},
                  "type": "NodePort"},
         "status": {"loadBalancer": {}}},
    "create service clusterip db --clusterip=None":
        {"kind": "Service",
         "apiVersion": "v1",
         "metadata": {"name": "db", "creationTimestamp": None, "labels": {"app": "db"}},
         "spec": {"selector": {"app": "db"}, "clusterIP": "None", "type": "ClusterIP"},
         "status": {"loadBalancer": {}}},
    "create token robot --duration=2h --audience=a1 --audience=a2":
        {"kind": "TokenRequest",
         "apiVersion": "authentication.k8s.io/v1",
         "metadata": {"creationTimestamp": None},
         "spec": {"audiences": ["a1", "a2"],
                  "expirationSeconds": 7200,
                  "boundObjectRef": None},
         "status": {"token": "", "expirationTimestamp": None}},
    "create role reader --verb=get,list --resource=services,deployments.apps --resource-name=web":
        {"kind": "Role",
         "apiVersion": "rbac.authorization.k8s.io/v1",
         "metadata": {"name": "reader", "creationTimestamp": None},
         "rules": [{"verbs": ["get", "list"],
                    "apiGroups": [""],
                    "resources": ["services"],
                    "resourceNames": ["web"]},
                   {"verbs": ["get", "list"],
                    "apiGroups": ["apps"],
                    "resources": ["deployments"],
                    "resourceNames": ["web"]}]},
    "create clusterrole agg --aggregation-rule=example.com/agg=true":
        {"kind": "ClusterRole",
         "apiVersion": "rbac.authorization.k8s.io/v1",
         "metadata": {"name": "agg", "creationTimestamp": None},
         "rules": None,
         "aggregationRule": {
             "clusterRoleSelectors": [{"matchLabels": {"example.com/agg": "true"}}]}},
    "create rolebinding robot-reads --role=reader --serviceaccount=default:robot --group=ops":
        {"kind": "RoleBinding",
         "apiVersion": "rbac.authorization.k8s.io/v1",
         "metadata": {"name": "robot-reads", "creationTimestamp": None},
         "subjects": [{"kind": "Group",
                       "apiGroup": "rbac.authorization.k8s.io",
                       "name": "ops"},
                      {"kind": "ServiceAccount", "name": "robot", "namespace": "default"}],
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io",
                     "kind": "Role",
                     "name": "reader"}},
    "create clusterrolebinding bob-agg --clusterrole=agg --user=bob":
        {"kind": "ClusterRoleBinding",
         "apiVersion": "rbac.authorization.k8s.io/v1",
         "metadata": {"name": "bob-agg", "creationTimestamp": None},
         "subjects": [{"kind": "User",
                       "apiGroup": "rbac.authorization.k8s.io",
                       "name": "bob"}],
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io",
                     "kind": "ClusterRole",
                     "name": "agg"}},
    "auth can-i list services -n shop":
        {"kind": "SelfSubjectAccessReview",
         "apiVersion": "authorization.k8s.io/v1",
         "metadata": {"creationTimestamp": None},
         "spec": {"resourceAttributes": {"namespace": "shop",
                                         "verb": "list",
                                         "resource": "services"}},
         "status": {"allowed": False}},
    "auth can-i get /healthz":
        {"kind": "SelfSubjectAccessReview",
         "apiVersion": "authorization.k8s.io/v1",
         "metadata": {"creationTimestamp": None},
         "spec": {"nonResourceAttributes": {"path": "/healthz", "verb": "get"}},
         "status": {"allowed": False}},
    "auth whoami":
        {"kind": "SelfSubjectReview",
         "apiVersion": "authentication.k8s.io/v1",
         "metadata": {"creationTimestamp": None},
         "status": {"userInfo": {}}},
}


# -- building bodies for the cases kubectl does not send ---------------------------------------


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1          # negative numbers: ten-byte two's complement
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, value) -> bytes:
    """One field: an int as a varint, str or bytes length-delimited."""
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    data = value.encode() if isinstance(value, str) else value
    return varint(number << 3 | 2) + varint(len(data)) + data


def envelope(api_version: str, kind: str, raw: bytes, *extra: bytes) -> bytes:
    """k8s\\0 and a runtime.Unknown: typeMeta, raw, then contentEncoding/contentType fields."""
    return proto.MAGIC + field(1, field(1, api_version) + field(2, kind)) + field(2, raw) + \
        b"".join(extra)


def meta(name: str) -> bytes:
    return field(1, field(1, name))


# -- decoding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", list(SENT))
def test_decodes_the_bodies_kubectl_sent_as_kubectl_would_write_them_in_json(command):
    decoded = proto.decode(bytes.fromhex(SENT[command]))
    assert json.dumps(decoded) == json.dumps(DECODED[command]), "values and key order"


def test_decoded_is_what_kubectl_itself_writes_in_json(api, tmp_path):
    """The oracle for DECODED: /usr/bin/kubectl printing, for each create command, the object
    it would send (--dry-run=client -o json), from the same Go struct it encodes."""
    env = {k: v for k, v in os.environ.items() if "PROXY" not in k.upper()}
    env.update(HOME=str(tmp_path), KUBECONFIG=api.write_kubeconfig(tmp_path / "kubeconfig"))
    (tmp_path / "blob.bin").write_bytes(b"\x00\xffpyxlb")
    for command in SENT:
        args = shlex.split(command)
        if args[0] != "create" or args[1] == "token":
            continue    # no dry run for a TokenRequest or the auth reviews
        cut = args.index("--") if "--" in args else len(args)
        done = subprocess.run(["/usr/bin/kubectl", *args[:cut], "--dry-run=client", "-o", "json",
                               *args[cut:]], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert json.dumps(json.loads(done.stdout)) == json.dumps(DECODED[command]), command


def test_the_envelope_names_the_type_and_holds_the_object():
    api_version, kind, raw = proto.unwrap(bytes.fromhex(
        SENT["create service loadbalancer web --tcp=80:8080"]))
    assert (api_version, kind) == ("v1", "Service")
    assert proto.message_of(api_version, kind) == "core/v1 Service"
    assert proto.to_json("core/v1 Service", raw)["spec"]["type"] == "LoadBalancer"
    assert proto.fields(raw)[1][0].startswith(b"\x0a\x03web"), "ObjectMeta, name first"


def test_go_json_rules_decide_what_is_written():
    # not omitempty: the zero value is written; omitempty: left out; a struct always
    assert proto.to_json("core/v1 ServicePort", field(1, "")) == {"port": 0, "targetPort": 0}
    assert proto.to_json("rbac/v1 RoleRef", b"") == {"apiGroup": "", "kind": "", "name": ""}
    assert proto.to_json("rbac/v1 PolicyRule", b"") == {"verbs": None}, "a nil list is null"
    assert proto.to_json("apps/v1 DeploymentSpec", b"") == {
        "selector": None, "template": {"metadata": {"creationTimestamp": None}, "spec": {
            "containers": None}}, "strategy": {}}
    # a pointer sent is kept even when zero; a non-pointer zero with omitempty is dropped
    assert proto.to_json("meta/v1 ObjectMeta", field(1, "a") + field(7, 0) + field(10, 0)) == \
        {"name": "a", "creationTimestamp": None, "deletionGracePeriodSeconds": 0}
    # the last value of a field sent twice wins, as in protobuf
    assert proto.to_json("core/v1 LocalObjectReference", field(1, "a") + field(1, "b")) == \
        {"name": "b"}


def test_numbers_times_and_the_special_types():
    assert proto.to_json("core/v1 ServicePort", field(3, -1))["port"] == -1
    assert proto.to_json("core/v1 ServicePort", field(4, field(1, 1) + field(3, "http"))) == \
        {"port": 0, "targetPort": "http"}
    stamped = proto.to_json("meta/v1 ObjectMeta", field(8, field(1, 1700000000) + field(2, 5)) +
                            field(9, b""))
    assert stamped == {"creationTimestamp": "2023-11-14T22:13:20Z", "deletionTimestamp": None}
    resources = field(1, field(1, "cpu") + field(2, field(1, "500m"))) + \
        field(2, field(1, "memory"))
    assert proto.to_json("core/v1 ResourceRequirements", resources) == \
        {"limits": {"cpu": "500m"}, "requests": {"memory": "0"}}
    managed = field(1, "kubectl") + field(7, field(1, b'{"f:data":{".":{}}}'))
    assert proto.to_json("meta/v1 ManagedFieldsEntry", managed) == \
        {"manager": "kubectl", "fieldsV1": {"f:data": {".": {}}}}
    user = field(1, "bob") + field(4, field(1, "scopes") + field(2, field(1, "a") + field(1, "b")))
    assert proto.to_json("authentication/v1 UserInfo", user) == \
        {"username": "bob", "extra": {"scopes": ["a", "b"]}}
    assert proto.to_json("core/v1 ConfigMap", field(3, field(1, "k") + field(2, b"\x00"))) == \
        {"metadata": {"creationTimestamp": None}, "binaryData": {"k": "AA=="}}


# -- refusing ------------------------------------------------------------------------------------


def affinity_deployment() -> bytes:
    """A Deployment whose pod template asks for an affinity (no kubectl create sends one)."""
    pod = field(2, field(1, "c") + field(2, "nginx:1")) + field(18, b"")
    return envelope("apps/v1", "Deployment", meta("aff") + field(2, field(3, field(2, pod))))


def test_refuses_what_the_tables_do_not_describe_naming_it():
    cases = {
        "field 99 of core/v1 ServiceAccount is not in the API stand-in's protobuf tables":
            envelope("v1", "ServiceAccount", meta("robot") + field(99, "x")),
        "field 18 (affinity) of core/v1 PodSpec holds a core/v1 Affinity": affinity_deployment(),
        "not Lease (coordination.k8s.io/v1)": envelope("coordination.k8s.io/v1", "Lease", b""),
        "gzip-encoded": envelope("v1", "ConfigMap", meta("c"), field(3, "gzip")),
        "inside the protobuf envelope is application/json":
            envelope("v1", "ConfigMap", b"{}", field(4, "application/json")),
    }
    for message, body in cases.items():
        with pytest.raises(proto.Unsupported) as err:
            proto.decode(body)
        assert message in str(err.value)


def test_refuses_bodies_that_are_not_protobuf_as_malformed():
    whole = bytes.fromhex(SENT["create namespace shop"])
    cases = {
        "starts with k8s": b'{"kind": "Namespace"}',
        "runs past the end": whole[:-3],
        "field 3 (port) of core/v1 ServicePort should be a varint":
            envelope("v1", "Service", field(2, field(1, field(3, "80")))),
        "is not UTF-8": envelope("v1", "Namespace", field(1, field(1, b"\xff"))),
        "overflows 64 bits": envelope("v1", "Service", field(2, field(1, b"\x18" + b"\xff" * 9 +
                                                                   b"\x7f"))),
        "IntOrString has type 2":
            envelope("v1", "Service", field(2, field(1, field(4, field(1, 2))))),
    }
    for message, body in cases.items():
        with pytest.raises(proto.ProtobufError) as err:
            proto.decode(body)
        assert not isinstance(err.value, proto.Unsupported), message
        assert message in str(err.value)


def test_the_tables_are_whole():
    """Every type a field names is described, refused by name, or one of the special types;
    every kind has its message; nothing in the tables is unreachable from a kind."""
    specials = {"string", "int", "bool", "bytes", "time", "intstr", "quantity", "fieldsv1",
                "strings"}
    used = set()
    for message, table in MESSAGES.items():
        names = [name for name, _, _ in table.values()]
        assert len(names) == len(set(names)), message
        for number, (name, kind, flags) in table.items():
            assert kind in specials or kind in MESSAGES or kind in NOT_DECODED, (message, name)
            assert set(flags) <= set("rmpo") and not {"r", "m"} <= set(flags), (message, name)
            used.add(kind)
    roots = {f"{FAMILIES[v]} {k}" for v, k in KINDS}
    assert roots <= set(MESSAGES)
    assert NOT_DECODED <= used and not NOT_DECODED & set(MESSAGES)
    reached, todo = set(), list(roots)
    while todo:
        message = todo.pop()
        if message not in reached:
            reached.add(message)
            todo += [k for _, k, _ in MESSAGES[message].values() if k in MESSAGES]
    assert reached == set(MESSAGES)


# -- the stand-in over HTTP ----------------------------------------------------------------------


def post(h, path: str, body: bytes, method: str = "POST", ctype: str = PROTOBUF):
    return h.request(method, path, content=body,
                     headers={"Content-Type": ctype, "Accept": f"{PROTOBUF},application/json"})


def test_standin_stores_protobuf_creates_and_updates_and_answers_json(api):
    with httpx2.Client(base_url=api.url, trust_env=False) as h:
        done = post(h, "/api/v1/namespaces/default/services",
                    bytes.fromhex(SENT["create service loadbalancer web --tcp=80:8080"]))
        assert done.status_code == 201 and done.headers["Content-Type"] == "application/json"
        assert done.json()["spec"]["clusterIP"] == api.get("Service", "web")["spec"]["clusterIP"]
        assert api.get("Service", "web")["spec"]["ports"][0]["targetPort"] == 8080
        path = "/api/v1/namespaces/default/configmaps"
        assert post(h, path, bytes.fromhex(
            SENT["create configmap conf --from-literal=mode=fast --from-file=blob.bin"])
        ).status_code == 201
        update = envelope("v1", "ConfigMap", meta("conf") + field(2, field(1, "mode") +
                                                                   field(2, "slow")))
        done = post(h, f"{path}/conf", update, method="PUT")
        assert done.status_code == 200 and done.json()["data"] == {"mode": "slow"}
        stored = api.get("ConfigMap", "conf")
        assert stored["data"] == {"mode": "slow"} and "binaryData" not in stored


def test_standin_refuses_what_it_cannot_read_with_the_servers_codes(api):
    with httpx2.Client(base_url=api.url, trust_env=False) as h:
        done = post(h, "/apis/apps/v1/namespaces/default/deployments", affinity_deployment())
        assert done.status_code == 415 and done.json()["reason"] == "UnsupportedMediaType"
        assert "field 18 (affinity) of core/v1 PodSpec" in done.json()["message"]
        assert api.get("Deployment", "aff") is None
        done = post(h, "/api/v1/namespaces", bytes.fromhex(SENT["create namespace shop"])[:-3])
        assert done.status_code == 400 and done.json()["reason"] == "BadRequest"
        done = post(h, "/api/v1/namespaces/default/services",
                    bytes.fromhex(SENT["create serviceaccount robot"]))
        assert done.status_code == 400 and "v1/ServiceAccount does not match" in \
            done.json()["message"]
        api.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})
        for method in ("PATCH", "DELETE"):
            done = post(h, "/api/v1/namespaces/default/configmaps/c", meta("c"), method=method)
            assert done.status_code == 415 and done.json()["reason"] == "UnsupportedMediaType"
        assert api.get("ConfigMap", "c") is not None
