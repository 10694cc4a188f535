"""A local Kubernetes API stand-in: enough of the REST API for lightkube and kubectl, with real
list/watch.

Kubernetes cannot run where the tests run, so the agent and the IP-allocation controller are
tested against this in-process HTTP server (stdlib; plain http on 127.0.0.1 unless TLS is
asked for). It speaks the API's JSON over the API's URLs, so the real client library works
against it unchanged, in-cluster configuration included, and so does the real kubectl
(``write_kubeconfig``; tests/k8s/test_kubectl.py).

What it implements, as the real API server does:

- The kinds in ``KINDS`` (Service, Node, EndpointSlice, both Events, Lease, ConfigMap, IPPool,
  BGPPeer, Namespace, ServiceAccount, the RBAC kinds, and, stored for kubectl with no
  controller acting on them, Deployment, DaemonSet and CustomResourceDefinition), core
  (``/api/v1``) and grouped (``/apis/{group}/{version}``), namespaced and cluster-scoped,
  with the all-namespaces form of list and watch.
- What kubectl asks before anything else (``standin_discovery``): discovery, plain and
  aggregated, with short names, categories and verbs; the OpenAPI v3 documents, which make
  kubectl validate on the server (``fieldValidation=Strict``: a custom resource with a field
  its CRD does not declare is refused; built-in kinds are not checked).
- One global resourceVersion, bumped by every write and stamped on the object; uid,
  creationTimestamp, generation (bumped when anything outside metadata and status changes).
- get, create (409 AlreadyExists), update (409 Conflict on a stale resourceVersion), patch,
  delete, deletecollection. Patches (``standin_patch``): JSON merge patch; JSON patch with
  add/remove/replace/move/copy/test; strategic merge patch for the built-in kinds (merge keys
  and directives; custom resources refuse it with 415); server-side apply (create or merge,
  ``metadata.managedFields`` per field manager, conflicts between apply managers, simplified
  as that module says). An update or patch that changes nothing is not a write: no new
  resourceVersion, no event. ``dryRun=All`` (query, or a delete's body) stores nothing.
- Custom resources (IPPool, BGPPeer) get the defaults of their CRD's structural schema (the
  stored CRD, else the one in deploy/crds/) on every write, and again on read when a CRD
  changes: an IPPool without ``announce`` reads ``announce: l2`` (``standin_discovery``'s
  ``apply_defaults`` says the rules: absent fields, and nulls that are not nullable).
- The status subresource: writes to the main resource keep the stored status, writes to
  ``/status`` change only the status. A Service or custom resource created over HTTP loses
  the status it was given, a Node keeps it (the administrator's ``create`` keeps it always).
- Finalizers: deleting an object that has some only sets deletionTimestamp; the update that
  removes the last one deletes it; adding a finalizer to an object being deleted is refused.
- list with labelSelector (``=``, ``==``, ``!=``, ``in``, ``notin``, ``key``, ``!key``,
  ``>``, ``<``), fieldSelector (metadata.name, metadata.namespace, and the fields the server
  adds for some kinds, a core Event's involvedObject.* among them: ``standin_select``) and
  limit/continue (pages come from one snapshot, so a paged list is consistent).
- Tables (``standin_tables``): a list, get or watch whose Accept asks for
  ``as=Table;g=meta.k8s.io`` (``kubectl get``) is answered with the server's columns.
- watch: from a resourceVersion (every later event, in order) or from nothing/"0" (ADDED for
  what exists, then live events); a label-filtered watch sees an object that stops matching
  as DELETED and one that starts matching as ADDED; BOOKMARK events when asked; timeoutSeconds;
  a resourceVersion older than the kept history answers 200 with one ERROR event holding a
  410 Expired Status, then ends. Streams are chunked, so a dropped connection is an error to
  the client while a stream the server ends is a clean end.
- Errors are Status objects with the HTTP code and reason the real server uses.
- Admission as kube-apiserver 1.33 does it (``standin_admission``), for HTTP and
  administrator writes alike, before anything is stored:

  - Namespaces are objects. default, kube-system, kube-public and kube-node-lease exist from
    the start (phase Active, spec.finalizers ["kubernetes"], the kubernetes.io/metadata.name
    label, as every Namespace gets). Creating a namespaced object in a namespace that does
    not exist is 404 (``namespaces "x" not found``), in a terminating one 403. Deleting a
    Namespace marks it Terminating and answers it (200); the namespace controller, a thread
    acting ``namespace_delay`` later, deletes what it holds (objects with finalizers are
    only marked, and it looks again when one goes), writes its five conditions (naming what
    remains and the finalizers holding it), and once it is empty drops its "kubernetes"
    finalizer and removes it. Until then its objects can be read, changed and deleted.
    default, kube-system and kube-public cannot be deleted.
  - Services are defaulted (type, sessionAffinity, protocol, targetPort, traffic policies,
    allocateLoadBalancerNodePorts, status.loadBalancer, ingress ipMode) and given cluster IPs
    from ``service_cidrs`` (dual-stack, IPv4 first, by default; ipFamilyPolicy and
    ipFamilies decide how many and which), node ports and health check node ports from
    ``node_ports`` (30000-32767), unique across the cluster; addresses and ports asked for
    are reserved or refused. An update keeps the allocated values it leaves out, and drops
    (and frees) what a type or policy change no longer needs, the LoadBalancer status
    included; deleting a Service frees what it held.
  - Validation, with the real messages and Status details (causes): object names by kind
    (``Kind.names``: DNS-1035 labels for Services, DNS-1123 labels for Namespaces, path
    segments for RBAC kinds, DNS-1123 subdomains for the rest); Service ports, types,
    affinity, cluster IPs and IP families, external IPs, source ranges, traffic policies,
    load balancer class and status ingress, and what may not change (cluster IPs, the
    primary IP family, loadBalancerClass, healthCheckNodePort); EndpointSlice addressType
    (required, immutable), its addresses and ports (ports default to protocol TCP, endpoint
    conditions are never defaulted: nil means unknown); a Namespace's phase.
- HTTPS (``tls=True``): a fresh CA and a server certificate valid a day, naming the bound
  address, loopback, ``localhost`` and ``kubernetes[.default[.svc[.cluster.local]]]``, so
  ``KubeConfig.from_service_account`` verifies it (``ca_pem``, ``ca_file``). A failed
  handshake ends that connection only.
- Authentication, on every path: ``Authorization: Bearer`` tokens from ``issue_token`` (a
  ServiceAccount's user and groups; the token dies with the ServiceAccount object or by
  ``revoke_token``) and ``admin_token`` (``kubernetes-admin``, ``system:masters``); an unknown
  or dead token is 401 with the real Status; no credentials is ``system:anonymous``.
  ``write_service_account`` and ``rotate_service_account`` write and atomically replace the
  files the kubelet mounts in a pod (lightkube re-reads the token file on a 401).
- Authorization (``authorization="RBAC"``; the default "AlwaysAllow" allows every
  authenticated request): every request is checked, before routing as on the real server,
  against the ClusterRoles, ClusterRoleBindings, Roles and RoleBindings stored at that moment;
  a refusal is the real 403 Status, message and details. The rules, and what is left out
  (aggregationRule, the bootstrap roles other than the public health/version, discovery and
  basic-user grants), are in ``standin_auth``, whose ``authorize`` also works offline.
  Impersonation (``Impersonate-User``/``-Group``: kubectl ``--as``) when the user may
  impersonate; SelfSubjectAccessReview (``kubectl auth can-i``) and SelfSubjectReview
  (``kubectl auth whoami``). The serviceaccounts/token subresource (``kubectl create token``)
  answers a TokenRequest with an ``issue_token`` token.
- ``audit``: every resource request that reached authorization (user, groups, verb, group,
  resource, subresource, namespace, name, allowed, the code answered), and every 401.
- ``apply_manifests``: the documents of a YAML file whose kind is served, created as the
  administrator (``deploy/namespace.yaml``, ``deploy/rbac.yaml``); the rest are returned.
- ``write_kubeconfig``: a kubeconfig (URL, CA, an administrator's or a ServiceAccount's
  token) for kubectl: ``KUBECONFIG=<file> kubectl get svc -A``.
- Request bodies with Content-Length or ``Transfer-Encoding: chunked`` (kubectl's ``--raw``
  writes; ``chunked_bodies`` counts them), in JSON or, for creates and updates (and the
  reviews and TokenRequest), in the Kubernetes protobuf kubectl's typed clients send
  (``kubectl create namespace|configmap|deployment|service ...|role|...``): ``standin_proto``
  reads the kinds ``standin_protobuf`` describes into the JSON the server would store and
  answers 415 naming a kind or field it does not describe. Answers are always JSON (those
  clients accept it).

What it does not: validation or defaulting beyond the above (labels, annotations, finalizer
and owner references are not checked; unknown fields are kept, not pruned; a custom resource
is not validated against its CRD's schema; kinds other than Service, EndpointSlice and
Namespace are checked for their names only, and Deployment, DaemonSet and CRD objects get no
defaults; an EndpointSlice's address is not checked against the loopback and link-local
ranges), controllers other than the namespace controller (a Deployment never gets pods; a CRD
gets an Established status but serves nothing: IPPool and BGPPeer are served whether or not
their CRDs are stored), admission plugins other than namespace lifecycle (quota, limit ranges,
webhooks...), the ``kubernetes`` Service and Endpoints objects, Pods, Secrets, ServiceCIDR and
IPAddress objects (allocation state is internal, and addresses and ports are handed out in
order where the real allocators pick at random; a dry run may move that order on), the
Namespace /finalize subresource, delete preconditions, propagation and grace periods, HTTP/2,
protobuf answers, client certificates, JWT tokens (tokens are opaque random strings),
ClusterRole ``aggregationRule``, SelfSubjectRulesReview (``kubectl auth can-i --list``).
Managed fields are recorded for apply operations only. Open watches are not cut when their
token is revoked. Updates without a resourceVersion are accepted for every kind (the real
server requires one for custom resources).

Tests drive it over HTTP through the real client (``client()`` as the administrator,
``client_for(token)`` as anyone), and also directly (``create``, ``get``, ``update``,
``patch``, ``delete``, ``list``: an administrator's writes, with the same events), and
inject faults (``drop_watches``, ``compact``, ``set_down``, ``fail_next``, and
``stall_watches``: a lagging watch, for one client or for all).
"""

from __future__ import annotations

import base64
import collections
import json
import logging
import os
import queue
import shutil
import socket
import ssl
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union
from urllib.parse import parse_qs, unquote, urlsplit

from pyxlb.errors import PyxlbError

from . import standin_auth as auth
from . import standin_patch
from .standin_auth import AuditRecord, RequestAttributes, UserInfo
from .standin_patch import PatchError, json_patch, merge_patch
from .standin_select import SelectorError, parse_field_selector, parse_label_selector

log = logging.getLogger(__name__)


# Kind.names: the rule an object name must follow (the API server's ValidateObjectMeta)
DNS1035_LABEL = "dns1035-label"          # Services: a name is a DNS label starting with a letter
DNS1123_LABEL = "dns1123-label"          # Namespaces
DNS1123_SUBDOMAIN = "dns1123-subdomain"  # most kinds, custom resources included
PATH_SEGMENT = "path-segment"            # RBAC kinds ("system:controller:x" is a valid name)


@dataclass(frozen=True, eq=False)
class Kind:
    """One resource type the stand-in serves: how it is named, addressed and written.
    Compared by identity: each lives once, in KINDS."""

    kind: str
    group: str                  # "" for the core group (/api/v1)
    version: str
    plural: str
    namespaced: bool
    status: bool = False        # has a /status subresource
    create_keeps_status: bool = False   # POST keeps the status it is given (Node does)
    # Top-level fields the real server writes even when empty (Go fields without
    # omitempty); a BOOKMARK object carries them so a typed client can decode it.
    zero_fields: Tuple[Tuple[str, Any], ...] = ()
    names: str = DNS1123_SUBDOMAIN      # the rule its object names follow
    short_names: Tuple[str, ...] = ()   # discovery: what kubectl also accepts ("svc")
    categories: Tuple[str, ...] = ()    # discovery: "all" puts it in `kubectl get all`
    custom: bool = False                # a custom resource (its CRD is in deploy/crds/)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


# Adding a kind is one line here.
KINDS: Tuple[Kind, ...] = (
    Kind("Service", "", "v1", "services", namespaced=True, status=True, names=DNS1035_LABEL,
         short_names=("svc",), categories=("all",)),
    Kind("Node", "", "v1", "nodes", namespaced=False, status=True, create_keeps_status=True,
         short_names=("no",)),
    Kind("ConfigMap", "", "v1", "configmaps", namespaced=True, short_names=("cm",)),
    Kind("Event", "", "v1", "events", namespaced=True, zero_fields=(("involvedObject", {}),),
         short_names=("ev",)),
    Kind("EndpointSlice", "discovery.k8s.io", "v1", "endpointslices", namespaced=True,
         zero_fields=(("addressType", ""), ("endpoints", None))),
    Kind("Event", "events.k8s.io", "v1", "events", namespaced=True,
         zero_fields=(("eventTime", None),), short_names=("ev",)),
    Kind("Lease", "coordination.k8s.io", "v1", "leases", namespaced=True),
    Kind("IPPool", "pyxlb.io", "v1alpha1", "ippools", namespaced=False, status=True,
         short_names=("ipp",), custom=True),
    Kind("BGPPeer", "pyxlb.io", "v1alpha1", "bgppeers", namespaced=False, status=True,
         short_names=("bgpp",), custom=True),
    Kind("Namespace", "", "v1", "namespaces", namespaced=False, status=True,
         names=DNS1123_LABEL, short_names=("ns",)),
    Kind("ServiceAccount", "", "v1", "serviceaccounts", namespaced=True, short_names=("sa",)),
    Kind("ClusterRole", "rbac.authorization.k8s.io", "v1", "clusterroles", namespaced=False,
         names=PATH_SEGMENT),
    Kind("ClusterRoleBinding", "rbac.authorization.k8s.io", "v1", "clusterrolebindings",
         namespaced=False, names=PATH_SEGMENT),
    Kind("Role", "rbac.authorization.k8s.io", "v1", "roles", namespaced=True,
         names=PATH_SEGMENT),
    Kind("RoleBinding", "rbac.authorization.k8s.io", "v1", "rolebindings", namespaced=True,
         names=PATH_SEGMENT),
    # stored only, no controller acts on them: what `kubectl apply -k deploy/` and the
    # examples hold (a Deployment never gets pods, a CRD does not add a kind)
    Kind("Deployment", "apps", "v1", "deployments", namespaced=True, status=True,
         short_names=("deploy",), categories=("all",)),
    Kind("DaemonSet", "apps", "v1", "daemonsets", namespaced=True, status=True,
         short_names=("ds",), categories=("all",)),
    Kind("CustomResourceDefinition", "apiextensions.k8s.io", "v1", "customresourcedefinitions",
         namespaced=False, status=True, short_names=("crd", "crds"),
         categories=("api-extensions",)),
)

DEFAULT_NAMESPACE = "default"
NAMESPACE_FINALIZER = "kubernetes"      # the namespace controller's spec.finalizers entry
AUTHORIZATION_MODES = ("AlwaysAllow", "RBAC")
WRITE_VERBS = ("create", "update", "patch", "delete")

_REASONS = {
    400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
    405: "MethodNotAllowed", 409: "Conflict", 410: "Expired", 415: "UnsupportedMediaType",
    422: "Invalid", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable",
    504: "Timeout",
}

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


class StandInError(PyxlbError):
    """A request refused as the API server would refuse it: the HTTP code, the Status reason
    and a message naming the object and the fault."""

    def __init__(self, code: int, message: str, reason: Optional[str] = None,
                 kind: Optional[Kind] = None, name: Optional[str] = None,
                 details: Optional[Dict[str, Any]] = None):
        super().__init__(message)
        self.code = code
        self.reason = reason or _REASONS.get(code, "Unknown")
        self.message = message
        self.kind = kind
        self.name = name
        self.details = details      # given whole (a refusal of a resource not served here)

    def status(self) -> dict:
        """The Status object the API server answers with."""
        status: Dict[str, Any] = {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        }
        if self.details is not None:
            status["details"] = dict(self.details)
        elif self.kind is not None or self.name is not None:
            details: Dict[str, Any] = {}
            if self.name is not None:
                details["name"] = self.name
            if self.kind is not None:
                details["group"] = self.kind.group
                details["kind"] = self.kind.plural
            status["details"] = details
        return status


def _not_found(kind: Kind, name: str) -> StandInError:
    return StandInError(404, f'{kind.plural} "{name}" not found', kind=kind, name=name)


def _conflict(kind: Kind, name: str) -> StandInError:
    return StandInError(
        409, f'Operation cannot be fulfilled on {kind.plural} "{name}": the object has been '
             f"modified; please apply your changes to the latest version and try again",
        reason="Conflict", kind=kind, name=name)


def _invalid(kind: Kind, name: str, what: str) -> StandInError:
    return StandInError(422, f'{kind.kind} "{name}" is invalid: {what}', kind=kind, name=name)


def _bad_request(message: str) -> StandInError:
    return StandInError(400, message)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _copy(obj: Any) -> Any:
    """A deep copy of a JSON value (a JSON round trip: several times faster than deepcopy)."""
    try:
        return json.loads(json.dumps(obj))
    except (TypeError, ValueError) as exc:
        raise _bad_request(f"not a JSON value ({exc}): {str(obj)[:80]}") from None


# ---------------------------------------------------------------------------------------
# Selectors


@dataclass(frozen=True)
class _Filter:
    """Which objects of a kind a list or a watch sees."""

    namespace: Optional[str] = None
    labels: Optional[Callable[[Dict[str, str]], bool]] = None
    fields: Optional[Callable[[dict], bool]] = None

    @classmethod
    def from_query(cls, namespace: Optional[str], query: Dict[str, str],
                   kind: Optional[Kind] = None) -> "_Filter":
        labels = query.get("labelSelector")
        fields = query.get("fieldSelector")
        try:
            return cls(namespace,
                       parse_label_selector(labels) if labels else None,
                       parse_field_selector(fields, kind) if fields else None)
        except SelectorError as exc:
            raise _bad_request(str(exc)) from None

    def matches(self, obj: dict) -> bool:
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        if self.labels is not None and not self.labels(meta.get("labels") or {}):
            return False
        if self.fields is not None and not self.fields(obj):
            return False
        return True


# ---------------------------------------------------------------------------------------
# The store


@dataclass(frozen=True)
class _Record:
    """A stored object and its JSON. Never changed once stored: readers share it freely."""

    obj: dict
    raw: bytes


@dataclass(frozen=True)
class _Event:
    rv: int
    kind: Kind
    type: str                   # ADDED, MODIFIED, DELETED
    old: Optional[_Record]      # the state before (for label-filtered watches)
    new: _Record


_DROP = object()                # queue sentinel: end the stream abruptly


class _Watcher:
    """One open watch: its filter, its connection and a queue of encoded lines to send."""

    def __init__(self, kind: Kind, flt: _Filter, bookmarks: bool, conn: socket.socket,
                 after: int, token: Optional[str] = None,
                 transform: Optional[Callable[[dict], bytes]] = None):
        self.kind = kind
        self.transform = transform  # what it sends of an object (a Table), else its JSON
        self.token = token      # the bearer token the watch was opened with
        self.held: List[bytes] = []     # lines kept back while the watch is stalled
        self.after = after      # events at or before this resourceVersion are not sent
        self.filter = flt
        self.bookmarks = bookmarks
        self.conn = conn
        self.queue: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self.dropped = False

    def line_for(self, ev: _Event) -> Optional[bytes]:
        """The line this watcher sees for an event, or None. A filtered watch sees an
        object entering its selection as ADDED and one leaving it as DELETED."""
        new_in = self.filter.matches(ev.new.obj)
        if ev.type == "MODIFIED":
            old_in = ev.old is not None and self.filter.matches(ev.old.obj)
            if old_in and new_in:
                etype = "MODIFIED"
            elif new_in:
                etype = "ADDED"
            elif old_in:
                etype = "DELETED"
            else:
                return None
        elif new_in:
            etype = ev.type
        else:
            return None
        return self.event_line(etype, ev.new)

    def event_line(self, etype: str, rec: "_Record") -> bytes:
        return _event_line(etype, rec.raw if self.transform is None else self.transform(rec.obj))


def _event_line(etype: str, raw: bytes) -> bytes:
    return b'{"type":"' + etype.encode() + b'","object":' + raw + b"}\n"


@dataclass(frozen=True)
class _Stall:
    kind: str
    namespace: Optional[str]
    token: Optional[str]

    def covers(self, w: "_Watcher") -> bool:
        return (w.kind.kind == self.kind
                and (self.namespace is None or w.filter.namespace == self.namespace)
                and (self.token is None or w.token == self.token))


@dataclass
class _Fault:
    remaining: int
    code: int
    kind: Optional[str]
    verb: str


@dataclass
class _Snapshot:
    """The records of a paged list, kept so every page comes from the same moment."""

    rv: int
    records: List[_Record]
    kind: Kind


class _Scheduler:
    """A controller's work queue: names due at a time, handled one at a time by a thread
    that runs between ``start`` and ``stop`` (names scheduled while it is stopped wait for
    the next start). A name scheduled again before it is due keeps the earlier time."""

    def __init__(self, handle: Callable[[str], None], name: str):
        self._handle = handle
        self._name = name
        self._cond = threading.Condition()
        self._due: Dict[str, float] = {}
        self._thread: Optional[threading.Thread] = None
        self._running = False

    def schedule(self, key: str, delay: float) -> None:
        due = time.monotonic() + delay
        with self._cond:
            if due < self._due.get(key, float("inf")):
                self._due[key] = due
            self._cond.notify()

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._running = True
            self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """End the thread, after the name it is handling, if any."""
        with self._cond:
            thread, self._thread = self._thread, None
            self._running = False
            self._cond.notify_all()
        if thread is not None:
            thread.join(timeout=10)

    def _next(self) -> List[str]:
        """Wait for the names that are due (none: stopped). Caller holds the condition."""
        while self._running:
            now = time.monotonic()
            ready = sorted(k for k, t in self._due.items() if t <= now)
            if ready:
                for key in ready:
                    del self._due[key]
                return ready
            self._cond.wait(min(self._due.values()) - now if self._due else None)
        return []

    def _loop(self) -> None:
        while True:
            with self._cond:
                ready = self._next()
            if not ready:
                return
            for key in ready:
                try:
                    self._handle(key)
                except Exception:   # a bug in a pass must not stop the controller
                    log.exception("API stand-in: %s failed on %s", self._name, key)


class ApiStandIn:
    """The stand-in server and its store. Start it (or use it as a context manager), point
    a lightkube Client at ``url`` (``client()`` makes one), and inspect or change the store
    directly with the administrator methods. Every method is thread-safe.

    ``tls=True`` serves https with a certificate from a fresh CA (``ca_pem``, ``ca_file``);
    ``authorization="RBAC"`` checks every request against the RBAC objects in the store, as
    a real cluster does ("AlwaysAllow", the default, allows every authenticated request).
    Bearer tokens are always checked: see ``issue_token`` and ``admin_token``.

    ``service_cidrs`` and ``node_ports`` are the cluster's --service-cluster-ip-range (one
    CIDR: a single-stack cluster; one per family, the first primary; default
    ``("10.96.0.0/12", "fd00:10:96::/108")``) and --service-node-port-range (default
    30000-32767): where Services get their cluster IPs and node ports.

    ``namespace_delay`` is how long the namespace controller takes to act on a Namespace
    being deleted (seconds, default 0.5; 0: at once, still in the background): its content
    goes, then the Namespace, in a thread that runs while the stand-in is started."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, history: int = 10000,
                 bookmark_interval: float = 1.0, tls: bool = False,
                 authorization: str = "AlwaysAllow",
                 service_cidrs: Optional[Sequence[str]] = None,
                 node_ports: Optional[Tuple[int, int]] = None,
                 namespace_delay: float = 0.5):
        if history < 0:
            raise StandInError(400, f"history must be >= 0, not {history}")
        if not namespace_delay >= 0:
            raise StandInError(400, f"namespace_delay must be >= 0, not {namespace_delay}")
        if bookmark_interval <= 0:
            raise StandInError(400, f"bookmark_interval must be > 0, not {bookmark_interval}")
        if authorization not in AUTHORIZATION_MODES:
            raise StandInError(400, f"authorization must be one of "
                                    f"{', '.join(AUTHORIZATION_MODES)}, not {authorization!r}")
        self.tls = tls
        self.authorization = authorization
        self._tokens = auth.TokenRegistry()
        # The cluster administrator (kubeadm's admin.conf): system:masters passes every check.
        self.admin_token = self._tokens.issue(
            UserInfo(auth.ADMIN_USER, (auth.MASTERS, auth.AUTHENTICATED)))
        self._audit_lock = threading.Lock()
        # Every request that reached authorization, and every 401, in arrival order.
        self.audit: List[AuditRecord] = []
        self.ca_pem: Optional[bytes] = None
        self.ca_file: Optional[str] = None
        self._tls_dir: Optional[str] = None
        self.host = host
        self.port = port
        self.bookmark_interval = bookmark_interval
        self._history_limit = history
        self._lock = threading.RLock()
        self._objects: Dict[Kind, Dict[Tuple[str, str], _Record]] = {k: {} for k in KINDS}
        # The API server's part of every write: defaulting, allocation, validation, namespace
        # lifecycle. Imported here: standin_admission builds on this module's names.
        from .standin_admission import Admission
        self._admission = Admission(service_cidrs, node_ports)
        self._namespaces = next(k for k in KINDS if k.kind == "Namespace" and not k.group)
        self._rv = 1
        self._seed(self._namespaces, self._admission.initial_namespaces())
        self.namespace_delay = float(namespace_delay)
        self._namespace_controller = _Scheduler(self._namespace_pass,
                                                "api-standin-namespace-controller")
        self._floor = 1                 # every event after this rv is still in _history
        self._history: "collections.deque[_Event]" = collections.deque()
        self._watchers: set = set()
        self._faults: List[_Fault] = []
        self._stalls: List[_Stall] = []
        self._snapshots: "OrderedDict[int, _Snapshot]" = OrderedDict()
        self._snapshot_ids = 0
        self._generated = 0
        self._crd_files: Optional[Dict[Tuple[str, str], dict]] = None   # deploy/crds/, read once
        self._dry = threading.local()   # .run: this thread's request is a dry run
        self._down = False
        self._stopping = False
        self._by_api = {(k.api_version, k.kind): k for k in KINDS}
        self._by_path = {(k.group, k.version, k.plural): k for k in KINDS}
        self._by_name: Dict[str, List[Kind]] = {}
        for k in KINDS:
            self._by_name.setdefault(k.kind, []).append(k)
        # (verb, Kind name) -> HTTP requests seen; writes to /status count under their kind
        self.requests: collections.Counter = collections.Counter()
        self.chunked_bodies = 0         # request bodies read with Transfer-Encoding: chunked
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        self._clients: list = []
        self.url = ""

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> "ApiStandIn":
        """Bind and serve in a background thread; ``url`` is valid afterwards."""
        if self._server is not None:
            raise StandInError(400, f"the API stand-in at {self.url} is already started")
        server = _Server((self.host, self.port), self)
        host, port = server.server_address[:2]
        if self.tls:
            try:
                server.ssl_context = self._make_tls(host)
            except BaseException:
                server.server_close()
                raise
        self._server = server
        self.port = port
        scheme = "https" if self.tls else "http"
        self.url = f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"api-standin-{port}", daemon=True)
        self._thread.start()
        with self._lock:
            self._stopping = False
        self._namespace_controller.start()
        return self

    def stop(self) -> None:
        """Close the clients made by ``client()``, every connection and the listening
        socket, and wait for the server's threads (the namespace controller's too) to end."""
        self._namespace_controller.stop()
        server, self._server = self._server, None
        if server is None:
            return
        for client in self._clients:
            try:
                client.close()
            except Exception:  # a client the test already broke: nothing left to release
                pass
        self._clients.clear()
        server.shutdown()
        server.server_close()
        with self._lock:
            self._stopping = True
            for w in self._watchers:
                w.dropped = True
                w.queue.put(_DROP)
        server.close_all(join=True)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._tls_dir is not None:
            shutil.rmtree(self._tls_dir, ignore_errors=True)
            self._tls_dir = None

    def __enter__(self) -> "ApiStandIn":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _make_tls(self, host: str) -> ssl.SSLContext:
        """A new CA and server certificate for `host` (the bound address), written to a
        temporary directory (``ssl`` loads a certificate chain only from files)."""
        material = auth.make_tls_material([host, self.host])
        tls_dir = tempfile.mkdtemp(prefix="pyxlb-standin-tls-")
        try:
            ca_file = os.path.join(tls_dir, "ca.crt")
            cert_file = os.path.join(tls_dir, "server.crt")
            key_file = os.path.join(tls_dir, "server.key")
            _write_file(ca_file, material.ca_pem, 0o644)
            _write_file(cert_file, material.cert_pem, 0o644)
            _write_file(key_file, material.key_pem, 0o600)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(cert_file, key_file)
            ctx.set_alpn_protocols(["http/1.1"])
        except BaseException:
            shutil.rmtree(tls_dir, ignore_errors=True)
            raise
        if self._tls_dir is not None:       # a restart: the old CA goes
            shutil.rmtree(self._tls_dir, ignore_errors=True)
        self._tls_dir, self.ca_file, self.ca_pem = tls_dir, ca_file, material.ca_pem
        return ctx

    def client(self, **kwargs: Any):
        """A new real lightkube Client for this server (closed by ``stop()``), as the cluster
        administrator: it sends ``admin_token`` (so it passes RBAC) and, with TLS, trusts
        the stand-in's CA. Keyword arguments go to ``lightkube.Client``; proxies from the
        environment are ignored."""
        return self.client_for(self.admin_token, **kwargs)

    def client_for(self, token: Optional[str], **kwargs: Any):
        """A new real lightkube Client (closed by ``stop()``) sending bearer `token`, or
        no credentials at all when `token` is None (the anonymous user).

        The config always names a user, if empty: lightkube 1.0.1 asserts that one is
        present, so ``KubeConfig.from_server(url)`` alone cannot make a Client."""
        import lightkube
        from lightkube.config.models import Cluster, User

        if not self.url:
            raise StandInError(400, "the API stand-in is not started: no URL to connect to")
        kwargs.setdefault("trust_env", False)
        cluster = Cluster(server=self.url, certificate_auth=self.ca_file if self.tls else None)
        config = lightkube.KubeConfig.from_one(cluster=cluster, user=User(token=token))
        client = lightkube.Client(config=config, **kwargs)
        self._clients.append(client)
        return client

    # -- identities ------------------------------------------------------------------------

    def issue_token(self, namespace: str, service_account: str) -> str:
        """A bearer token for an existing ServiceAccount: the user
        ``system:serviceaccount:<namespace>:<name>`` in the groups ``system:serviceaccounts``,
        ``system:serviceaccounts:<namespace>`` and ``system:authenticated``. It dies with
        the ServiceAccount object (as bound tokens do) or by ``revoke_token``. The token is an
        opaque random string; a real one is a signed JWT."""
        kind = self.kind_of("ServiceAccount")
        with self._lock:
            rec = self._objects[kind].get(self._key(kind, namespace, service_account))
        if rec is None:
            raise StandInError(404, f'serviceaccounts "{service_account}" not found in namespace '
                                    f'"{namespace}": tokens are issued only for an existing '
                                    f"ServiceAccount (create it, or apply deploy/rbac.yaml)",
                               kind=kind, name=service_account)
        uid = rec.obj["metadata"]["uid"]
        return self._tokens.issue(auth.service_account_user(namespace, service_account),
                                  (namespace, service_account, uid))

    def revoke_token(self, token: str) -> None:
        """Stop accepting `token`: its next request gets 401."""
        if not self._tokens.revoke(token):
            raise StandInError(404, "revoke_token: that token was never issued by this stand-in")

    def write_service_account(self, directory: Union[str, os.PathLike], namespace: str,
                              name: str) -> str:
        """Write what the kubelet mounts at /var/run/secrets/kubernetes.io/serviceaccount
        for a pod of ServiceAccount `namespace`/`name`: ``token`` (a new token, mode 0600),
        ``namespace`` and, with TLS, ``ca.crt`` (0644). Returns the directory, ready for
        ``KubeConfig.from_service_account`` (which also needs KUBERNETES_SERVICE_HOST/PORT:
        ``service_env()``)."""
        token = self.issue_token(namespace, name)
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        if self.tls:
            if self.ca_pem is None:
                raise StandInError(400, "write_service_account: start the stand-in first (the "
                                        "CA is made when it starts)")
            _write_file(str(path / "ca.crt"), self.ca_pem, 0o644)
        _write_file(str(path / "namespace"), namespace.encode(), 0o644)
        _replace_file(path / "token", token.encode(), 0o600)
        return str(path)

    def rotate_service_account(self, directory: Union[str, os.PathLike], *,
                               revoke_old: bool = True) -> str:
        """Do what the kubelet does when a projected token nears expiry: issue a new token
        for the same ServiceAccount and swap it into ``directory/token`` atomically (a
        reader sees the old file or the new one, never a partial one). The old token is
        revoked unless `revoke_old` is false. Returns the new token."""
        token_file = Path(directory) / "token"
        try:
            old = token_file.read_text().strip()
        except FileNotFoundError:
            raise StandInError(404, f"rotate_service_account: no token file in {directory} "
                                    f"(write_service_account writes one)") from None
        account = self._tokens.account_of(old)
        if account is None:
            raise StandInError(400, f"rotate_service_account: the token in {token_file} is not "
                                    f"a ServiceAccount token issued by this stand-in")
        token = self.issue_token(account[0], account[1])
        _replace_file(token_file, token.encode(), 0o600)
        if revoke_old:
            self._tokens.revoke(old)
        return token

    def service_env(self) -> Dict[str, str]:
        """KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT as a pod would have them,
        pointing at this stand-in."""
        if not self.url:
            raise StandInError(400, "the API stand-in is not started: no address yet")
        host = urlsplit(self.url).hostname or self.host
        return {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": str(self.port)}

    def write_kubeconfig(self, path: Union[str, os.PathLike], *, namespace: Optional[str] = None,
                         service_account: Optional[Tuple[str, str]] = None,
                         token: Optional[str] = None, name: str = "pyxlb-lab") -> str:
        """Write a kubeconfig for kubectl (and any client) pointing at this stand-in: its URL,
        with TLS its CA (embedded), and a bearer token: ``admin_token`` (the cluster
        administrator, as kubeadm's admin.conf), a new token of ``service_account``
        (namespace, name), or the given `token`. The context names `namespace` if given
        (kubectl's default is "default"). Written with mode 0600; returns the path
        (``KUBECONFIG=<path>``)."""
        import yaml

        if not self.url:
            raise StandInError(400, "write_kubeconfig: start the stand-in first (no URL yet)")
        if service_account is not None:
            if token is not None:
                raise StandInError(400, "write_kubeconfig: give a service_account or a token, "
                                        "not both")
            token = self.issue_token(*service_account)
            user = f"system:serviceaccount:{service_account[0]}:{service_account[1]}"
        elif token is None:
            token, user = self.admin_token, auth.ADMIN_USER
        else:
            user = "token-user"
        config = auth.kubeconfig(self.url, self.ca_pem if self.tls else None, user, token,
                                 namespace, name)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_file(str(target), yaml.safe_dump(config, sort_keys=False).encode(), 0o600)
        return str(target)

    def _non_resource(self, method: str, path: str, accept: Optional[str], body: bytes,
                      content_type: Optional[str], user: UserInfo
                      ) -> Optional[Tuple[int, bytes, str]]:
        """Discovery, the OpenAPI v3 documents (standin_discovery) and the self reviews
        (kubectl auth can-i, whoami): (code, body, content type), or None for every other
        path (the OpenAPI v2 document included: 404)."""
        from . import standin_discovery as disco

        if method == "GET":
            found = disco.discovery(KINDS, path, accept, urlsplit(self.url).netloc)
            if found is None and path.startswith("/openapi/"):
                crds = {(k.group, k.plural): self._crd_of(k) for k in KINDS if k.custom}
                found = disco.openapi(KINDS, path, {g: c for g, c in crds.items() if c})
            return found
        if method == "POST":
            for review in disco.REVIEWS:
                if path.rstrip("/") == f"/apis/{review.group}/{review.version}/{review.plural}":
                    return 201, _dumps(self._review(review, _request_object(body, content_type),
                                                    user)), "application/json"
            parts = path.strip("/").split("/")
            if len(parts) == 7 and parts[:3] == ["api", "v1", "namespaces"] \
                    and parts[4::2] == ["serviceaccounts", "token"]:
                return 201, _dumps(self._token_request(parts[3], parts[5], _request_object(
                    body, content_type))), "application/json"
        return None

    API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"

    def _token_request(self, namespace: str, name: str, body: Any) -> dict:
        """The serviceaccounts/token subresource (kubectl create token): a TokenRequest answered
        with a token from ``issue_token``. That token is opaque and lives as long as the
        ServiceAccount: expirationSeconds (default 3600, not checked) only sets the
        expirationTimestamp answered, audiences (default the API server's) and boundObjectRef
        are answered as sent, not enforced."""
        if not isinstance(body, dict) or body.get("kind") not in (None, "TokenRequest"):
            raise _bad_request("the body must be a TokenRequest")
        if self.get("ServiceAccount", name, namespace) is None:
            raise _not_found(self.kind_of("ServiceAccount"), name)
        spec = dict(body["spec"]) if isinstance(body.get("spec"), dict) else {}
        spec["audiences"] = spec.get("audiences") or [self.API_AUDIENCE]
        spec["expirationSeconds"] = spec.get("expirationSeconds") or 3600
        expires = time.gmtime(time.time() + int(spec["expirationSeconds"]))
        return {"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"name": name, "namespace": namespace, "creationTimestamp": None},
                "spec": spec, "status": {"token": self.issue_token(namespace, name),
                                         "expirationTimestamp": time.strftime(
                                             "%Y-%m-%dT%H:%M:%SZ", expires)}}

    def _review(self, review: Any, body: Any, user: UserInfo) -> dict:
        """A SelfSubjectAccessReview answered by the authorizer in force, or a
        SelfSubjectReview (who the token is)."""
        if not isinstance(body, dict) or body.get("kind") not in (None, review.kind):
            raise _bad_request(f"the body must be a {review.kind}")
        try:
            return auth.review(review.kind, review.api_version, body, user, self._decide)
        except ValueError as exc:
            raise StandInError(422, str(exc), reason="Invalid") from None

    # -- audit -----------------------------------------------------------------------------

    def clear_audit(self) -> None:
        """Forget the recorded requests."""
        with self._audit_lock:
            del self.audit[:]

    def _record(self, record: AuditRecord) -> AuditRecord:
        with self._audit_lock:
            self.audit.append(record)
        return record

    def rbac_objects(self) -> List[dict]:
        """Copies of the ClusterRoles, ClusterRoleBindings, Roles and RoleBindings stored now
        (what ``standin_auth.authorize`` takes)."""
        return [json.loads(rec.raw) for rec in self._rbac_records()]

    def _rbac_records(self) -> List[_Record]:
        with self._lock:
            return [rec for k in KINDS if k.group == auth.RBAC_GROUP
                    for _, rec in sorted(self._objects[k].items())]

    def _authenticate(self, header: Optional[str], attrs: RequestAttributes) -> UserInfo:
        """The user of a request; a bad token is recorded and answered 401 (the real
        server's Status: message and reason "Unauthorized", no details)."""
        try:
            return self._tokens.authenticate(header, self._account_uid)
        except auth.Unauthenticated:
            self._record(AuditRecord.of(None, attrs, None)).code = 401
            raise StandInError(401, "Unauthorized") from None

    def _account_uid(self, namespace: str, name: str) -> Optional[str]:
        """The uid of a live ServiceAccount (None once deleted or being deleted)."""
        kind = self.kind_of("ServiceAccount")
        with self._lock:
            rec = self._objects[kind].get(self._key(kind, namespace, name))
        if rec is None or "deletionTimestamp" in rec.obj["metadata"]:
            return None
        return rec.obj["metadata"]["uid"]

    def _impersonate(self, user: UserInfo, target: Optional[str],
                     groups: List[str]) -> UserInfo:
        """Impersonation (kubectl --as, --as-group): the request acts as `target` in
        `groups` when `user` may impersonate them (standin_auth.impersonation)."""
        if not target:
            if groups:
                raise _bad_request("requested impersonation of groups without a user")
            return user
        acting, checks = auth.impersonation(target, groups)
        for attrs in checks:
            decision = self._decide(user, attrs)
            if not decision.allowed:
                status = auth.forbidden_status(user.name, attrs, decision.reason)
                raise StandInError(403, status["message"], reason="Forbidden",
                                   details=status["details"])
        return acting

    def _decide(self, user: UserInfo, attrs: RequestAttributes) -> auth.Decision:
        """The authorizer in force: RBAC over the stored objects, or AlwaysAllow."""
        if self.authorization == "RBAC":
            return auth.authorize((rec.obj for rec in self._rbac_records()),
                                  user.name, user.groups, attrs)
        return auth.Decision(True, via="AlwaysAllow")

    def _authorize(self, user: UserInfo, attrs: RequestAttributes) -> Optional[AuditRecord]:
        """Allow the request or raise the 403 the real server answers. Resource requests are
        recorded in ``audit`` (the returned record gets its HTTP code when answered)."""
        decision = self._decide(user, attrs)
        record = self._record(AuditRecord.of(user, attrs, decision)) \
            if attrs.resource_request else None
        if not decision.allowed:
            status = auth.forbidden_status(user.name, attrs, decision.reason)
            if record is not None:
                record.code = 403
            raise StandInError(403, status["message"], reason="Forbidden",
                               details=status["details"])
        return record

    # -- manifests -------------------------------------------------------------------------

    def apply_manifests(self, source: Union[str, os.PathLike]) -> List[dict]:
        """Create, as the administrator (``create()``), every document of a YAML file (a path)
        or text whose kind the stand-in serves, in order. Returns the documents skipped
        because their kind is not served (DaemonSet, CustomResourceDefinition, ...); empty
        documents are dropped silently. An object that already exists is a 409, as
        ``kubectl create`` would answer."""
        import yaml

        one_line = isinstance(source, str) and "\n" not in source
        if isinstance(source, os.PathLike) or (one_line and os.path.isfile(source)) \
                or (one_line and str(source).endswith((".yaml", ".yml"))):
            try:
                text = Path(source).read_text()
            except OSError as exc:
                raise StandInError(404, f"apply_manifests: cannot read {source}: {exc}") from None
        else:
            text = str(source)
        try:
            docs = list(yaml.safe_load_all(text))
        except yaml.YAMLError as exc:
            raise _bad_request(f"apply_manifests: not YAML: {exc}") from None
        skipped: List[dict] = []
        for doc in docs:
            if doc is None:
                continue
            if not isinstance(doc, dict):
                raise _bad_request(f"apply_manifests: a document is not an object: "
                                   f"{str(doc)[:80]}")
            if (doc.get("apiVersion"), doc.get("kind")) not in self._by_api:
                skipped.append(doc)
                continue
            self.create(doc)
        return skipped

    # -- administrator access --------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._rv

    def kind_of(self, kind: str, api_version: Optional[str] = None) -> Kind:
        """The Kind named `kind` ("Service"; "Event" is the core one unless `api_version`
        says "events.k8s.io/v1")."""
        if api_version is not None:
            found = self._by_api.get((api_version, kind))
            if found is None:
                raise StandInError(404, f"unknown kind {api_version}/{kind}: the stand-in "
                                        f"serves {_kind_names()}")
            return found
        kinds = self._by_name.get(kind)
        if not kinds:
            raise StandInError(404, f"unknown kind {kind!r}: the stand-in serves {_kind_names()}")
        return kinds[0]

    def create(self, obj: dict) -> dict:
        """Create `obj` (apiVersion, kind, metadata.name and, if namespaced, namespace or
        "default"), status included. Returns the stored object."""
        kind = self._kind_of_obj(obj)
        body = _copy(obj)
        ns = (body.get("metadata") or {}).get("namespace") if kind.namespaced else None
        return json.loads(self._create(kind, ns or DEFAULT_NAMESPACE, body, keep_status=True).raw)

    def get(self, kind: str, name: str, namespace: Optional[str] = None, *,
            api_version: Optional[str] = None) -> Optional[dict]:
        """A deep copy of the stored object, or None."""
        k = self.kind_of(kind, api_version)
        with self._lock:
            rec = self._objects[k].get(self._key(k, namespace, name))
        return json.loads(rec.raw) if rec is not None else None

    def update(self, obj: dict) -> dict:
        """Replace a stored object, status included; 409 if obj carries a stale
        resourceVersion. Finalizer rules apply as over HTTP."""
        kind = self._kind_of_obj(obj)
        meta = obj.get("metadata") or {}
        name = meta.get("name")
        if not name:
            raise _bad_request(f"cannot update a {kind.kind} without metadata.name")
        return json.loads(self._update(kind, meta.get("namespace"), name, _copy(obj),
                                       part="all").raw)

    def patch(self, kind: str, name: str, patch: dict, namespace: Optional[str] = None, *,
              api_version: Optional[str] = None) -> dict:
        """Apply a JSON merge patch to a stored object, status included."""
        k = self.kind_of(kind, api_version)
        if not isinstance(patch, dict):
            raise _bad_request(f"a merge patch for {k.plural} {name!r} must be an object")
        return json.loads(self._patch(k, namespace, name, lambda doc: merge_patch(doc, patch),
                                      part="all").raw)

    def delete(self, kind: str, name: str, namespace: Optional[str] = None, *,
               api_version: Optional[str] = None) -> None:
        """Delete an object, or only mark it (deletionTimestamp) while it has finalizers."""
        k = self.kind_of(kind, api_version)
        self._delete(k, namespace, name)

    def list(self, kind: str, namespace: Optional[str] = None, *,
             api_version: Optional[str] = None) -> List[dict]:
        """Deep copies of the stored objects of a kind (of every apiVersion named so, when
        none is given: ``list("Event")`` returns both Event kinds), in one namespace or all."""
        if api_version is not None:
            kinds = [self.kind_of(kind, api_version)]
        else:
            kinds = self._by_name.get(kind) or [self.kind_of(kind)]
        with self._lock:
            records = [rec for k in kinds for key, rec in sorted(self._objects[k].items())
                       if namespace is None or key[0] == namespace]
        return [json.loads(rec.raw) for rec in records]

    # -- faults ----------------------------------------------------------------------------

    def drop_watches(self) -> int:
        """Abruptly close every open watch connection (no end of stream: the client sees a
        broken transfer). Returns how many were closed."""
        with self._lock:
            watchers = [w for w in self._watchers if not w.dropped]
            for w in watchers:
                w.dropped = True
                _shutdown(w.conn)
                w.queue.put(_DROP)
        return len(watchers)

    def compact(self) -> None:
        """Forget the event history and every paging snapshot: a watch resumed from any
        older resourceVersion gets 410 Expired, as after an etcd compaction."""
        with self._lock:
            self._history.clear()
            self._floor = self._rv
            self._snapshots.clear()

    def set_down(self, down: bool) -> None:
        """While down, every connection is closed as soon as it is accepted and every open
        connection (watches included) is cut: clients see connection errors."""
        server = self._server
        with self._lock:
            self._down = bool(down)
            if down:
                for w in self._watchers:
                    w.dropped = True
                    w.queue.put(_DROP)
        if down and server is not None:
            server.close_all(join=False)

    @property
    def down(self) -> bool:
        return self._down

    def stall_watches(self, kind: str, namespace: Optional[str] = None,
                      token: Optional[str] = None) -> None:
        """Make matching watches slow, as a watch behind a congested link or a lagging
        server is: their streams stay open but deliver nothing (no bookmarks either) until
        ``resume_watches``, while lists and writes go on. Matching: the Kind name, the
        namespace the watch was opened on (None: any) and the bearer token it was opened with
        (None: any client; with per-pod tokens this stalls one agent). Watches opened while
        stalled are stalled too."""
        self.kind_of(kind)
        with self._lock:
            self._stalls.append(_Stall(kind, namespace, token))

    def resume_watches(self) -> int:
        """End every stall: each stalled watch sends what it kept back, in order. Returns
        the number of events released."""
        released = 0
        with self._lock:
            self._stalls.clear()
            for w in self._watchers:
                for line in w.held:
                    w.queue.put(line)
                released += len(w.held)
                w.held = []
        return released

    def _stalled(self, w: _Watcher) -> bool:
        return any(s.covers(w) for s in self._stalls)

    def fail_next(self, n: int, code: int = 409, kind: Optional[str] = None,
                  verb: str = "update") -> None:
        """Answer the next `n` HTTP writes matching `verb` (create, update, patch, delete or
        "any") and `kind` (a Kind name, or None for every kind) with a Status of `code`,
        without performing them. Direct administrator writes are never failed."""
        if verb != "any" and verb not in WRITE_VERBS:
            raise StandInError(400, f"fail_next: verb must be one of {', '.join(WRITE_VERBS)} "
                                    f"or 'any', not {verb!r}")
        if kind is not None:
            self.kind_of(kind)
        if n < 0 or not 400 <= code <= 599:
            raise StandInError(400, f"fail_next: need n >= 0 and an error code, "
                                    f"not n={n} code={code}")
        with self._lock:
            self._faults.append(_Fault(n, code, kind, verb))

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0) -> bool:
        """Poll `predicate` until it is true or `timeout` seconds pass; its last answer."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            if time.monotonic() >= deadline:
                return bool(predicate())
            time.sleep(0.01)

    # -- internals: the store ----------------------------------------------------------------

    def _kind_of_obj(self, obj: dict) -> Kind:
        if not isinstance(obj, dict) or not obj.get("kind"):
            raise _bad_request(f"an object needs kind and apiVersion: {str(obj)[:80]}")
        return self.kind_of(obj["kind"], obj.get("apiVersion"))

    @staticmethod
    def _key(kind: Kind, namespace: Optional[str], name: str) -> Tuple[str, str]:
        return ((namespace or DEFAULT_NAMESPACE) if kind.namespaced else "", name)

    def _commit(self, kind: Kind, etype: str, old: Optional[_Record], obj: dict) -> _Record:
        """Stamp a new resourceVersion on `obj`, store it (or remove it: DELETED), record the
        event and hand it to every watcher of the kind. Caller holds the lock. In a dry run
        (``dryRun=All``) nothing is stored: the answer is the object as it would be."""
        if getattr(self._dry, "run", False):
            obj["metadata"]["resourceVersion"] = old.obj["metadata"]["resourceVersion"] \
                if old is not None else ""
            return _Record(obj, _dumps(obj))
        self._rv += 1
        meta = obj["metadata"]
        meta["resourceVersion"] = str(self._rv)
        rec = _Record(obj, _dumps(obj))
        key = (meta.get("namespace", ""), meta["name"])
        if etype == "DELETED":
            self._objects[kind].pop(key, None)
        else:
            self._objects[kind][key] = rec
        self._admission.stored(kind, old.obj if old is not None else None,
                               None if etype == "DELETED" else obj)
        if kind.kind == "CustomResourceDefinition":
            self._crd_changed(meta["name"])
        ev = _Event(self._rv, kind, etype, old, rec)
        self._history.append(ev)
        while len(self._history) > self._history_limit:
            self._floor = self._history.popleft().rv
        for w in self._watchers:
            if w.kind is kind and not w.dropped and ev.rv > w.after:
                line = w.line_for(ev)
                if line is None:
                    pass
                elif w.held or self._stalled(w):
                    w.held.append(line)
                else:
                    w.queue.put(line)
        return rec

    def _create(self, kind: Kind, namespace: Optional[str], obj: Any,
                keep_status: bool) -> _Record:
        if not isinstance(obj, dict):
            raise _bad_request(f"the body of a {kind.kind} create must be a JSON object")
        self._check_type(kind, obj)
        meta = obj.get("metadata")
        if meta is None:
            meta = obj["metadata"] = {}
        if not isinstance(meta, dict):
            raise _bad_request(f"{kind.kind}: metadata must be an object")
        if kind.namespaced:
            if meta.get("namespace") and meta["namespace"] != namespace:
                raise _bad_request(f"the namespace of the provided object "
                                   f"({meta['namespace']}) does not match the namespace sent "
                                   f"on the request ({namespace})")
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        with self._lock:
            if kind.namespaced:
                ns = self._objects[self._namespaces].get(("", namespace or DEFAULT_NAMESPACE))
                self._admission.check_create_in(kind, namespace or DEFAULT_NAMESPACE, meta,
                                                self._namespaces, ns.obj if ns else None)
            if not meta.get("name") and meta.get("generateName"):
                self._generated += 1
                meta["name"] = f"{meta['generateName']}{_suffix(self._generated)}"
            name = meta.get("name")
            if not name or not isinstance(name, str):
                raise _invalid(kind, "", "metadata.name: Required value: name or generateName "
                                         "is required")
            if meta.get("resourceVersion"):
                raise StandInError(500, f'{kind.plural} "{name}": resourceVersion should not be '
                                        f"set on objects to be created", kind=kind, name=name)
            obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = _now()
            meta["generation"] = 1
            meta.pop("deletionTimestamp", None)
            meta.pop("deletionGracePeriodSeconds", None)
            if kind.status and not keep_status:
                obj.pop("status", None)
            self._default_custom(kind, obj)
            # defaults, allocation, validation: refused writes change nothing
            self._admission.create(kind, obj)
            if self._key(kind, namespace, name) in self._objects[kind]:
                raise StandInError(409, f'{kind.plural} "{name}" already exists',
                                   reason="AlreadyExists", kind=kind, name=name)
            return self._commit(kind, "ADDED", None, obj)

    def _default_custom(self, kind: Kind, obj: dict) -> None:
        """A custom resource gets the defaults of its CRD's schema (the stored CRD, else
        deploy/crds/), as the API server's decoder gives them: standin_discovery's
        apply_defaults. Built-in kinds are left to the admission step."""
        if kind.custom:
            from .standin_discovery import apply_defaults, crd_version_schema

            apply_defaults(obj, crd_version_schema(self._crd_of(kind), kind.version))

    def _crd_changed(self, crd_name: str) -> None:
        """A CRD was written or removed. The API server defaults a custom resource on every
        read from storage too, so the stored objects of its kind now read with the defaults
        of the schema in force: rewritten in place, same resourceVersion, no event (nothing
        was written). Caller holds the lock."""
        for kind in KINDS:
            if not kind.custom or f"{kind.plural}.{kind.group}" != crd_name:
                continue
            store = self._objects[kind]
            for key, rec in list(store.items()):
                obj = json.loads(rec.raw)
                self._default_custom(kind, obj)
                if obj != rec.obj:
                    store[key] = _Record(obj, _dumps(obj))

    def _check_type(self, kind: Kind, obj: dict) -> None:
        if obj.get("kind") not in (None, kind.kind) \
                or obj.get("apiVersion") not in (None, kind.api_version):
            raise _bad_request(f"the object's type {obj.get('apiVersion')}/{obj.get('kind')} does "
                               f"not match the request's {kind.api_version}/{kind.kind}")

    def _update(self, kind: Kind, namespace: Optional[str], name: str, obj: Any,
                part: str) -> _Record:
        """PUT: `part` is "main" (status kept), "status" (only status taken) or "all"."""
        if not isinstance(obj, dict):
            raise _bad_request(f"the body of a {kind.kind} update must be a JSON object")
        self._check_type(kind, obj)
        meta = obj.get("metadata") or {}
        if not isinstance(meta, dict):
            raise _bad_request(f"{kind.kind} {name}: metadata must be an object")
        if meta.get("name") not in (None, name):
            raise _bad_request(f"the name of the object ({meta['name']}) does not match the name "
                               f"on the URL ({name})")
        url_ns = namespace or DEFAULT_NAMESPACE
        if kind.namespaced and meta.get("namespace") not in (None, "", url_ns):
            raise _bad_request(f"the namespace of the object ({meta['namespace']}) does not match "
                               f"the namespace on the URL ({url_ns})")
        with self._lock:
            old = self._objects[kind].get(self._key(kind, namespace, name))
            if old is None:
                raise _not_found(kind, name)
            given = meta.get("resourceVersion")
            if given and given != old.obj["metadata"]["resourceVersion"]:
                raise _conflict(kind, name)
            return self._replace(kind, old, obj, part)

    def _patch(self, kind: Kind, namespace: Optional[str], name: str,
               apply: Callable[[dict], Any], part: str) -> _Record:
        """PATCH: `apply` turns a fresh copy of the stored object into the patched one."""
        with self._lock:
            old = self._objects[kind].get(self._key(kind, namespace, name))
            if old is None:
                raise _not_found(kind, name)
            try:
                new = apply(json.loads(old.raw))
            except PatchError as exc:
                if exc.code == 422:
                    raise _invalid(kind, name, f"the patch cannot be applied: {exc}") from None
                raise StandInError(exc.code, exc.message, kind=kind, name=name) from None
            if not isinstance(new, dict) or not isinstance(new.get("metadata"), dict):
                raise _invalid(kind, name, "the patched object is not an object with metadata")
            given = new["metadata"].get("resourceVersion")
            if given and given != old.obj["metadata"]["resourceVersion"]:
                raise _conflict(kind, name)
            return self._replace(kind, old, new, part)

    def _replace(self, kind: Kind, old: _Record, new: dict, part: str) -> _Record:
        """Write `new` over `old`, keeping what the server owns. Caller holds the lock."""
        old_obj, old_meta = old.obj, old.obj["metadata"]
        if part == "status":
            result = json.loads(old.raw)
            if "status" in new:
                result["status"] = new["status"]
            else:
                result.pop("status", None)
        else:
            result = new
            if part == "main" and kind.status:
                if "status" in old_obj:
                    result["status"] = _copy(old_obj["status"])
                else:
                    result.pop("status", None)
        meta = result.get("metadata")
        if not isinstance(meta, dict):
            meta = result["metadata"] = {}
        for key in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp",
                    "deletionGracePeriodSeconds", "generation"):
            if key in old_meta:
                meta[key] = old_meta[key]
            else:
                meta.pop(key, None)
        result["apiVersion"], result["kind"] = kind.api_version, kind.kind
        # defaults, carried-over allocations, validation (before comparing: a write that
        # leaves out only what the server filled in changes nothing)
        self._default_custom(kind, result)
        self._admission.update(kind, old_obj, result, part)
        if _spec_of(result) != _spec_of(old_obj):
            meta["generation"] = int(old_meta.get("generation") or 0) + 1
        deleting = "deletionTimestamp" in old_meta
        if deleting:
            added = set(meta.get("finalizers") or ()) - set(old_meta.get("finalizers") or ())
            if added:
                raise _invalid(kind, meta["name"], "metadata.finalizers: Forbidden: no new "
                               f"finalizers can be added if the object is being deleted, found "
                               f"new finalizers {sorted(added)}")
        meta["resourceVersion"] = old_meta["resourceVersion"]
        if result == old_obj:
            return old      # nothing changed: not a write, no event
        if deleting and not meta.get("finalizers") and self._finalized(kind, result):
            meta.pop("finalizers", None)
            rec = self._commit(kind, "DELETED", old, result)
            self._gone(kind, result)
            return rec
        return self._commit(kind, "MODIFIED", old, result)

    def _delete(self, kind: Kind, namespace: Optional[str], name: str) -> _Record:
        with self._lock:
            self._admission.check_delete(kind, name)
            old = self._objects[kind].get(self._key(kind, namespace, name))
            if old is None:
                raise _not_found(kind, name)
            meta = old.obj["metadata"]
            if "deletionTimestamp" in meta:
                return old  # already being deleted: waiting for its finalizers
            obj = json.loads(old.raw)
            if kind is self._namespaces:
                return self._terminate(old, obj)
            if meta.get("finalizers"):
                obj["metadata"]["deletionTimestamp"] = _now()
                obj["metadata"]["deletionGracePeriodSeconds"] = 0
                return self._commit(kind, "MODIFIED", old, obj)
            rec = self._commit(kind, "DELETED", old, obj)
            self._gone(kind, obj)
            return rec

    def _seed(self, kind: Kind, objs: List[dict]) -> None:
        """Store what a cluster has from its start (the initial Namespaces): at the first
        resourceVersion, with no event, as if they predated every watch."""
        for obj in objs:
            meta = obj["metadata"]
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1,
                        resourceVersion=str(self._rv))
            self._objects[kind][self._key(kind, None, meta["name"])] = _Record(obj, _dumps(obj))

    @staticmethod
    def _finalized(kind: Kind, obj: dict) -> bool:
        """Whether nothing but metadata.finalizers holds an object being deleted: a Namespace
        also waits for its spec.finalizers (the namespace controller's "kubernetes")."""
        if kind.kind == "Namespace" and not kind.group:
            return not (obj.get("spec") or {}).get("finalizers")
        return True

    def _terminate(self, old: _Record, obj: dict) -> _Record:
        """Delete a Namespace as the API server does: mark it Terminating (deletionTimestamp,
        status.phase) and answer it; the namespace controller empties and removes it later, in
        the background (``_namespace_pass``, ``namespace_delay`` seconds on). Caller holds
        the lock."""
        obj["metadata"]["deletionTimestamp"] = _now()
        obj["status"] = dict(obj.get("status") or {}, phase="Terminating")
        rec = self._commit(self._namespaces, "MODIFIED", old, obj)
        self._wake_namespace_controller(obj["metadata"]["name"])
        return rec

    def _wake_namespace_controller(self, name: str) -> None:
        """Have the namespace controller look at Namespace `name` after ``namespace_delay``
        (a dry run changed nothing: nothing to look at)."""
        if not getattr(self._dry, "run", False):
            self._namespace_controller.schedule(name, self.namespace_delay)

    def _namespace_pass(self, name: str) -> None:
        """The namespace controller's work on one terminating Namespace (run by
        ``_namespace_controller``'s thread): delete everything in it (what has finalizers is
        only marked, and the pass runs again when such an object goes), then write its
        conditions and, once it is empty, finalize and remove it (``_settle``)."""
        with self._lock:
            rec = self._objects[self._namespaces].get(("", name))
            if rec is None or "deletionTimestamp" not in rec.obj["metadata"]:
                return
            for kind in KINDS:
                if not kind.namespaced:
                    continue
                for key in sorted(k for k in self._objects[kind] if k[0] == name):
                    content = self._objects[kind][key]
                    if "deletionTimestamp" in content.obj["metadata"]:
                        continue
                    gone = json.loads(content.raw)
                    if gone["metadata"].get("finalizers"):
                        gone["metadata"]["deletionTimestamp"] = _now()
                        gone["metadata"]["deletionGracePeriodSeconds"] = 0
                        self._commit(kind, "MODIFIED", content, gone)
                    else:
                        self._commit(kind, "DELETED", content, gone)
            self._settle(name)

    def _gone(self, kind: Kind, obj: dict) -> None:
        """An object was deleted: if its Namespace is terminating, the namespace controller
        looks again (it may now be empty). Caller holds the lock."""
        if not kind.namespaced:
            return
        ns = self._objects[self._namespaces].get(("", obj["metadata"].get("namespace") or ""))
        if ns is not None and "deletionTimestamp" in ns.obj["metadata"]:
            self._wake_namespace_controller(ns.obj["metadata"]["name"])

    def _settle(self, name: str) -> None:
        """The end of a namespace controller pass: write the conditions saying what still
        holds the Namespace (all five, as the controller does), and once it is empty drop its
        "kubernetes" finalizer (the controller's PUT /finalize) and remove it, unless other
        finalizers still hold it. Caller holds the lock."""
        rec = self._objects[self._namespaces].get(("", name))
        if rec is None or "deletionTimestamp" not in rec.obj["metadata"]:
            return
        remaining: Dict[str, int] = {}
        finalizers: Dict[str, int] = collections.Counter()
        for kind in KINDS:
            if not kind.namespaced:
                continue
            held = [r for key, r in self._objects[kind].items() if key[0] == name]
            if held:
                remaining[f"{kind.plural}.{kind.group}"] = len(held)   # "services." for core
            for r in held:
                finalizers.update(r.obj["metadata"].get("finalizers") or ())
        obj = json.loads(rec.raw)
        status = obj.setdefault("status", {})
        before = {c.get("type"): c for c in status.get("conditions") or ()}
        conditions = self._admission.namespace_conditions(remaining, dict(finalizers), _now())
        for cond in conditions:       # an unchanged condition keeps its transition time
            prior = before.get(cond["type"])
            if prior is not None and prior.get("status") == cond["status"]:
                cond["lastTransitionTime"] = prior.get("lastTransitionTime")
        status["conditions"] = conditions
        if obj != rec.obj:
            rec = self._commit(self._namespaces, "MODIFIED", rec, obj)
        if remaining:
            return
        obj = json.loads(rec.raw)
        spec = obj.get("spec") or {}
        left = [f for f in spec.get("finalizers") or () if f != NAMESPACE_FINALIZER]
        obj["spec"] = {k: v for k, v in spec.items() if k != "finalizers"}
        if left:
            obj["spec"]["finalizers"] = left
        if obj != rec.obj:
            rec = self._commit(self._namespaces, "MODIFIED", rec, obj)
        if not left and not obj["metadata"].get("finalizers"):
            self._commit(self._namespaces, "DELETED", rec, json.loads(rec.raw))

    def _select(self, kind: Kind, flt: _Filter) -> List[_Record]:
        """Matching records in key order (namespace, name), as etcd lists them. Caller holds
        the lock."""
        store = self._objects[kind]
        return [store[key] for key in sorted(store) if flt.matches(store[key].obj)]

    def _list_page(self, kind: Kind, flt: _Filter, query: Dict[str, str],
                   table: Optional[str] = None) -> bytes:
        """A page of a list: the kind's List, or (`table`: its meta.k8s.io version) a Table."""
        meta, page = self._list_records(kind, flt, query)
        if table:
            return _dumps(self._table(kind, [r.obj for r in page], meta, table, query))
        head = _dumps({"kind": f"{kind.kind}List", "apiVersion": kind.api_version,
                       "metadata": meta})
        return head[:-1] + b',"items":[' + b",".join(r.raw for r in page) + b"]}"

    def _list_records(self, kind: Kind, flt: _Filter, query: Dict[str, str]
                      ) -> Tuple[Dict[str, Any], List[_Record]]:
        limit = _int_param(query, "limit", 0)
        token = query.get("continue")
        with self._lock:
            if token:
                snap_id, offset = _parse_continue(token)
                snap = self._snapshots.get(snap_id)
                if snap is None or snap.kind is not kind:
                    raise StandInError(410, "the provided continue parameter is too old to display "
                                            "a consistent list result: start a new list",
                                       reason="Expired", kind=kind)
                rv, records = snap.rv, snap.records
            else:
                snap_id, offset = None, 0
                rv, records = self._rv, self._select(kind, flt)
            end = len(records) if limit <= 0 else min(offset + limit, len(records))
            meta: Dict[str, Any] = {"resourceVersion": str(rv)}
            if end < len(records):
                if snap_id is None:
                    self._snapshot_ids += 1
                    snap_id = self._snapshot_ids
                    self._snapshots[snap_id] = _Snapshot(rv, records, kind)
                    while len(self._snapshots) > 32:
                        self._snapshots.popitem(last=False)
                meta["continue"] = _make_continue(snap_id, end)
                meta["remainingItemCount"] = len(records) - end
            elif snap_id is not None:
                self._snapshots.pop(snap_id, None)
            page = records[offset:end]
        return meta, page

    def _table(self, kind: Kind, objs: List[dict], meta: Dict[str, Any], version: str,
               query: Dict[str, str]) -> dict:
        """The Table `kubectl get` prints (standin_tables), the CRD's columns for a custom
        resource."""
        from . import standin_tables

        return standin_tables.table(kind, objs, meta, version=version,
                                    include=query.get("includeObject") or "Metadata",
                                    crd=self._crd_of(kind) if kind.custom else None)

    def _crd_of(self, kind: Kind) -> Optional[dict]:
        """The CustomResourceDefinition of a custom resource: the stored one, else the one in
        deploy/crds/."""
        from . import standin_discovery

        crd_kind = self.kind_of("CustomResourceDefinition")
        with self._lock:
            rec = self._objects[crd_kind].get(("", f"{kind.plural}.{kind.group}"))
        if rec is not None:
            return rec.obj
        if self._crd_files is None:
            self._crd_files = standin_discovery.crd_schemas()
        return self._crd_files.get((kind.group, kind.plural))

    def _open_watch(self, kind: Kind, flt: _Filter, query: Dict[str, str],
                    conn: socket.socket, token: Optional[str] = None,
                    transform: Optional[Callable[[dict], bytes]] = None
                    ) -> Tuple[Optional[_Watcher], List[bytes]]:
        """Register a watcher and return it with the lines it must send first; (None,
        [ERROR line]) when the resourceVersion is older than the kept history."""
        since = query.get("resourceVersion") or "0"
        try:
            since_rv = int(since)
        except ValueError:
            raise _bad_request(f"resourceVersion {since!r} is not a number") from None
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        with self._lock:
            w = _Watcher(kind, flt, bookmarks, conn, after=max(since_rv, self._rv), token=token,
                         transform=transform)
            if since_rv == 0:
                backlog = [w.event_line("ADDED", rec) for rec in self._select(kind, flt)]
            elif since_rv < self._floor:
                err = StandInError(410, f"too old resource version: {since_rv} ({self._floor})",
                                   reason="Expired")
                return None, [_event_line("ERROR", _dumps(err.status()))]
            else:
                events = []
                for ev in reversed(self._history):
                    if ev.rv <= since_rv:
                        break
                    if ev.kind is kind:
                        events.append(ev)
                backlog = [line for line in (w.line_for(ev) for ev in reversed(events)) if line]
            if self._down or self._stopping:
                w.dropped = True
                w.queue.put(_DROP)
            elif self._stalled(w):
                w.held, backlog = backlog, []
            self._watchers.add(w)
        return w, backlog

    def _close_watch(self, w: _Watcher) -> None:
        with self._lock:
            self._watchers.discard(w)

    def _bookmark(self, w: _Watcher) -> Optional[bytes]:
        """A BOOKMARK line at the current resourceVersion, or None while events for this
        watcher are still queued (a bookmark must never pass an event it would cover)."""
        with self._lock:
            if not w.queue.empty() or w.held or self._stalled(w):
                return None
            obj: Dict[str, Any] = {"kind": w.kind.kind, "apiVersion": w.kind.api_version,
                                   "metadata": {"resourceVersion": str(self._rv)}}
            for key, value in w.kind.zero_fields:
                obj[key] = _copy(value)
        return _event_line("BOOKMARK", _dumps(obj))

    def _answer(self, verb: str, kind: Kind, namespace: Optional[str], name: Optional[str],
                sub: Optional[str], query: Dict[str, str], body: bytes,
                content_type: Optional[str], accept: Optional[str] = None) -> Tuple[int, bytes]:
        """The HTTP code and JSON body for every request but a watch. A list or get whose
        Accept asks for a Table (kubectl get) is answered with one."""
        from .standin_tables import wants_table

        table = wants_table(accept) if verb in ("list", "get") else None
        if verb == "list":
            return 200, self._list_page(kind, _Filter.from_query(namespace, query, kind), query,
                                        table)
        if verb == "deletecollection":
            return 200, self._delete_collection(kind, _Filter.from_query(namespace, query, kind))
        strict = self._strict(kind, query)
        if verb == "create":
            keep = kind.create_keeps_status or not kind.status
            return 201, self._create(kind, namespace, strict(_parse_body(body)),
                                     keep_status=keep).raw
        if name is None:
            raise StandInError(405, f"{verb} needs an object name")
        if verb == "get":
            with self._lock:
                rec = self._objects[kind].get(self._key(kind, namespace, name))
            if rec is None:
                raise _not_found(kind, name)
            if table:
                meta = {"resourceVersion": rec.obj["metadata"].get("resourceVersion", "")}
                return 200, _dumps(self._table(kind, [rec.obj], meta, table, query))
            return 200, rec.raw
        if verb == "delete":
            return 200, self._delete(kind, namespace, name).raw
        part = "status" if sub == "status" else "main"
        if verb == "update":
            return 200, self._update(kind, namespace, name, strict(_parse_body(body)), part).raw
        if (content_type or "").split(";")[0].strip() == APPLY_PATCH:
            return self._server_side_apply(kind, namespace, name, part, body, query)
        patcher = _patcher(kind, content_type, _parse_body(body))
        return 200, self._patch(kind, namespace, name, lambda doc: strict(patcher(doc)),
                                part).raw

    def _strict(self, kind: Kind, query: Dict[str, str]) -> Callable[[Any], Any]:
        """fieldValidation=Strict (what kubectl asks): a custom resource with a field its
        CRD's schema does not declare is a 400, as the server's strict decoding answers.
        Built-in kinds are not checked (the stand-in has no schemas for them)."""
        if query.get("fieldValidation") != "Strict" or not kind.custom:
            return lambda obj: obj
        from .standin_discovery import crd_version_schema, unknown_fields

        schema = crd_version_schema(self._crd_of(kind), kind.version)

        def check(obj: Any) -> Any:
            unknown = unknown_fields(obj, schema) if isinstance(obj, dict) else []
            if unknown:
                found = ", ".join(f'unknown field "{u}"' for u in unknown)
                raise _bad_request(f'{kind.kind} in version "{kind.version}" cannot be handled '
                                   f"as a {kind.kind}: strict decoding error: {found}")
            return obj
        return check

    def _delete_collection(self, kind: Kind, flt: _Filter) -> bytes:
        """DELETE on a collection: delete (or mark, with finalizers) every matching object;
        answers the List of what was deleted."""
        with self._lock:
            gone = [self._delete(kind, r.obj["metadata"].get("namespace"),
                                 r.obj["metadata"]["name"]) for r in self._select(kind, flt)]
            rv = self._rv
        head = _dumps({"kind": f"{kind.kind}List", "apiVersion": kind.api_version,
                       "metadata": {"resourceVersion": str(rv)}})
        return head[:-1] + b',"items":[' + b",".join(r.raw for r in gone) + b"]}"

    def _server_side_apply(self, kind: Kind, namespace: Optional[str], name: str, part: str,
                           body: bytes, query: Dict[str, str]) -> Tuple[int, bytes]:
        """PATCH with an apply patch (kubectl apply --server-side): create the object, or
        merge the applied configuration into it, as standin_patch.apply says."""
        import yaml

        manager = query.get("fieldManager")
        if not manager:
            raise _bad_request("PATCH with an apply patch requires the fieldManager parameter")
        try:
            applied = yaml.safe_load(body.decode() if body else "")
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise _bad_request(f"the apply patch is not YAML or JSON: {exc}") from None
        if not isinstance(applied, dict) or not applied.get("kind") or \
                not applied.get("apiVersion"):
            raise _bad_request("an apply patch is a whole object: apiVersion and kind are "
                               "required")
        self._check_type(kind, applied)
        meta = applied.get("metadata") if isinstance(applied.get("metadata"), dict) else {}
        if meta.get("name") not in (None, name):
            raise _bad_request(f"the name of the object ({meta['name']}) does not match the "
                               f"name on the URL ({name})")
        self._strict(kind, query)(applied)
        schema = {} if kind.custom else standin_patch.schema_of(kind.group, kind.kind)
        with self._lock:
            old = self._objects[kind].get(self._key(kind, namespace, name))
            try:
                out = standin_patch.apply(json.loads(old.raw) if old else None, applied, schema,
                                          manager, query.get("force") == "true",
                                          kind.api_version, _now())
            except standin_patch.PatchError as exc:
                raise StandInError(exc.code, exc.message, kind=kind, name=name) from None
            if out.created:
                out.obj.setdefault("metadata", {})["name"] = name
                keep = part == "status" or kind.create_keeps_status or not kind.status
                return 201, self._create(kind, namespace or DEFAULT_NAMESPACE, out.obj,
                                         keep_status=keep).raw
            given = meta.get("resourceVersion")
            if given and given != old.obj["metadata"]["resourceVersion"]:
                raise _conflict(kind, name)
            out.obj["metadata"]["resourceVersion"] = old.obj["metadata"]["resourceVersion"]
            return 200, self._replace(kind, old, out.obj, part).raw

    def _take_fault(self, verb: str, kind: Kind) -> Optional[int]:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and fault.verb in ("any", verb) \
                        and fault.kind in (None, kind.kind):
                    fault.remaining -= 1
                    code = fault.code
                    self._faults = [f for f in self._faults if f.remaining > 0]
                    return code
        return None

    def _count(self, verb: str, kind: Kind) -> None:
        with self._lock:
            self.requests[(verb, kind.kind)] += 1

    def _route(self, path: str) -> Tuple[Kind, Optional[str], Optional[str], Optional[str]]:
        """(kind, namespace, name, subresource) for an API path; 404 for anything else."""
        parts = [unquote(p) for p in path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise StandInError(404, "the server could not find the requested resource")
        namespace = None
        # /api/v1/namespaces/NAME/status is the Namespace's own subresource, not a
        # resource "status" inside namespace NAME (the real server decides it so too)
        if len(rest) >= 3 and rest[0] == "namespaces" \
                and not (len(rest) == 3 and rest[2] in ("status", "finalize")):
            namespace, rest = rest[1], rest[2:]
        kind = self._by_path.get((group, version, rest[0])) if 1 <= len(rest) <= 3 else None
        if kind is None:
            raise StandInError(404, "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if (namespace is not None and not kind.namespaced) \
                or (kind.namespaced and namespace is None and name is not None) \
                or (sub is not None and (sub != "status" or not kind.status)):
            raise StandInError(404, "the server could not find the requested resource")
        return kind, namespace, name, sub


def _kind_names() -> str:
    return ", ".join(sorted({f"{k.kind} ({k.api_version})" for k in KINDS}))


def _spec_of(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "kind", "apiVersion")}


def _suffix(n: int) -> str:
    """A five-character name suffix for generateName (deterministic, unlike the server's)."""
    digits = "bcdfghjklmnpqrstvwxz2456789"
    out = ""
    for _ in range(5):
        n, r = divmod(n, len(digits))
        out = digits[r] + out
    return out


def _int_param(query: Dict[str, str], name: str, default: int) -> int:
    value = query.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise _bad_request(f"{name}={value!r} is not an integer") from None


def _make_continue(snap_id: int, offset: int) -> str:
    return base64.urlsafe_b64encode(_dumps({"s": snap_id, "o": offset})).decode()


def _parse_continue(token: str) -> Tuple[int, int]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        return int(data["s"]), int(data["o"])
    except (ValueError, KeyError, TypeError):
        raise _bad_request(f"continue token {token[:40]!r} is not one this server gave") from None


def _shutdown(sock: socket.socket) -> None:
    try:
        # The plain socket's shutdown, also for a TLS socket: SSLSocket.shutdown would drop
        # its TLS state under a thread still writing to it.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:     # already closed by the peer or by us
        pass


def _write_file(path: str, data: bytes, mode: int) -> None:
    """Write a whole file with exactly `mode` (whatever the umask)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)
        f.write(data)


def _replace_file(path: Path, data: bytes, mode: int) -> None:
    """Replace a file atomically: write a temporary file beside it, then rename it over."""
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------------------
# HTTP


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its connections, so they can be cut (faults, stop)."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: Tuple[str, int], standin: ApiStandIn):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.standin = standin
        self.ssl_context: Optional[ssl.SSLContext] = None     # set: serve TLS
        self._conns: Dict[socket.socket, threading.Thread] = {}
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        with self._conns_lock:
            if self.standin.down:
                _shutdown(request)
                request.close()
                return
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t = threading.Thread(target=self._serve, args=(request, client_address), daemon=True,
                                 name="api-standin-conn")
            self._conns[request] = t
        t.start()

    def _serve(self, request: socket.socket, client_address: Any) -> None:
        conn: socket.socket = request
        try:
            if self.ssl_context is not None:
                tls = self._handshake(request)
                if tls is None:
                    return
                conn = tls
            self.finish_request(conn, client_address)
        except OSError:     # the client went away, or a fault cut the connection
            pass
        except Exception:
            log.exception("API stand-in: connection from %s failed", client_address)
        finally:
            self.shutdown_request(conn)
            with self._conns_lock:
                self._conns.pop(conn, None)
                self._conns.pop(request, None)

    def _handshake(self, request: socket.socket) -> Optional[ssl.SSLSocket]:
        """The TLS side of an accepted connection, handshaken in the connection's own
        thread (a slow or failing client never holds up the others); None when the
        handshake fails, which ends only this connection."""
        assert self.ssl_context is not None
        try:
            request.settimeout(10)
            conn = self.ssl_context.wrap_socket(request, server_side=True)
            conn.settimeout(None)
        except (OSError, ValueError) as exc:    # ssl.SSLError is an OSError
            log.debug("API stand-in: TLS handshake failed: %s", exc)
            _shutdown(request)
            request.close()
            return None
        with self._conns_lock:
            # wrapping detached the plain socket: cut through the TLS one from now on
            thread = self._conns.pop(request, None)
            if thread is not None:
                self._conns[conn] = thread
            cut = thread is None or self.standin.down or self.standin._stopping
        if cut:     # close_all or set_down ran during the handshake
            _shutdown(conn)
        return conn

    def close_all(self, join: bool) -> None:
        """Cut every open connection; with `join`, wait for their threads to end."""
        with self._conns_lock:
            conns = list(self._conns.items())
        for sock, _ in conns:
            _shutdown(sock)
        if join:
            for _, t in conns:
                t.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    """One connection's requests: routes them to the store and writes the answers."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib's name)
        log.debug("API stand-in: " + format, *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        si = self.server.standin
        if si.down:
            self.close_connection = True    # no answer at all: a dead server
            return
        try:
            body = self._read_body()
        except StandInError as exc:     # a malformed body: the connection cannot go on
            self.close_connection = True
            self._send_json(exc.code, _dumps(exc.status()))
            return
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        record: Optional[AuditRecord] = None
        try:
            # As the real server: authenticate (every path), authorize (before routing, so a
            # refused request for a resource not served here is 403, not 404), then serve.
            attrs = auth.request_attributes(method, url.path, query)
            user = si._authenticate(self.headers.get("Authorization"), attrs)
            user = si._impersonate(user, self.headers.get("Impersonate-User"),
                                   self.headers.get_all("Impersonate-Group") or [])
            record = si._authorize(user, attrs)
            if url.path in ("/healthz", "/readyz", "/livez"):
                self._send(200, b"ok", "text/plain")
                return
            if url.path == "/version":
                self._send_json(200, _dumps({"major": "1", "minor": "33",
                                             "gitVersion": "v1.33.0-pyxlb-standin"}))
                return
            extra = si._non_resource(method, url.path, self.headers.get("Accept"), body,
                                     self.headers.get("Content-Type"), user)
            if extra is not None:
                self._answered(record, extra[0])
                self._send(*extra)
                return
            kind, namespace, name, sub = si._route(url.path)
            verb = _verb(method, name, sub, query)
            if verb is None or (verb == "create" and kind.namespaced and namespace is None):
                raise StandInError(405, f"the server does not allow this method on the "
                                        f"requested resource ({method} {url.path})")
            si._count(verb, kind)
            if query.get("dryRun", "All") != "All":
                raise _bad_request(f'unsupported dryRun value {query["dryRun"]!r}: only "All"')
            if verb in WRITE_VERBS:
                code = si._take_fault(verb, kind)
                if code is not None:
                    raise StandInError(code, f"injected fault: {verb} {kind.plural}"
                                             f"{' ' + name if name else ''} answers {code}",
                                       kind=kind, name=name)
            if verb == "watch":
                self._watch(kind, _Filter.from_query(namespace, query, kind), query, record)
                return
            if body and (self.headers.get("Content-Type") or "").startswith(
                    "application/vnd.kubernetes.protobuf"):
                if verb not in ("create", "update"):
                    raise StandInError(415, f"the API stand-in reads protobuf bodies of "
                                            f"creates and updates only, not of a {verb}",
                                       reason="UnsupportedMediaType")
                # kubectl create namespace|service|...: the JSON the server would store
                body = _dumps(_request_object(body, self.headers.get("Content-Type")))
            si._dry.run = verb != "get" and ("dryRun" in query or _delete_dry_run(verb, body))
            try:
                code, raw = si._answer(verb, kind, namespace, name, sub, query, body,
                                       self.headers.get("Content-Type"),
                                       self.headers.get("Accept"))
            finally:
                si._dry.run = False
            self._answered(record, code)
            self._send_json(code, raw)
        except StandInError as exc:
            self._answered(record, exc.code)
            self._send_json(exc.code, _dumps(exc.status()))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:
            log.exception("API stand-in: %s %s failed", method, self.path)
            err = StandInError(500, f"API stand-in internal error: {type(exc).__name__}: {exc}")
            self._answered(record, 500)
            self._send_json(500, _dumps(err.status()))

    @staticmethod
    def _answered(record: Optional[AuditRecord], code: int) -> None:
        if record is not None and record.code is None:
            record.code = code

    def _read_body(self) -> bytes:
        """The request body: Content-Length bytes, or a chunked body (kubectl sends those),
        which wins when both are given, as HTTP/1.1 says."""
        encoding = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" not in encoding:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                raise _bad_request("Content-Length is not a number") from None
            return self.rfile.read(length) if length > 0 else b""
        with self.server.standin._lock:
            self.server.standin.chunked_bodies += 1
        parts: List[bytes] = []
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _bad_request(f"malformed chunk size line {line[:40]!r}") from None
            if size < 0:
                raise _bad_request(f"malformed chunk size line {line[:40]!r}")
            if size == 0:
                break
            data = self.rfile.read(size)
            if len(data) != size or self.rfile.readline(1024) not in (b"\r\n", b"\n"):
                raise _bad_request("a chunk of the request body is cut short")
            parts.append(data)
        while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
            pass    # trailer fields: nothing here reads them
        return b"".join(parts)

    def _send(self, code: int, raw: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _send_json(self, code: int, raw: bytes) -> None:
        # exactly "application/json": lightkube turns an error into ApiError only then
        self._send(code, raw, "application/json")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _watch(self, kind: Kind, flt: _Filter, query: Dict[str, str],
               record: Optional[AuditRecord] = None) -> None:
        """Stream a watch: the backlog, then live events, bookmarks when asked, until the
        timeout (clean end), a fault (abrupt end) or the client leaves."""
        si = self.server.standin
        timeout = _int_param(query, "timeoutSeconds", 0)
        from .standin_tables import wants_table

        table = wants_table(self.headers.get("Accept"))
        transform = None if not table else (lambda obj: _dumps(si._table(
            kind, [obj], {"resourceVersion": obj["metadata"].get("resourceVersion", "")},
            table, query)))
        w, backlog = si._open_watch(kind, flt, query, self.connection,
                                    auth.bearer_token(self.headers.get("Authorization")),
                                    transform)
        self.close_connection = True
        self._answered(record, 200)
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
            if w is None:   # expired: one ERROR event, then a clean end, as the real server does
                self._chunk(b"".join(backlog))
                self.wfile.write(b"0\r\n\r\n")
            else:
                self._stream(si, w, backlog, timeout)
        except OSError:     # the client left, or a fault cut the socket under us
            pass
        finally:
            if w is not None:
                si._close_watch(w)

    def _stream(self, si: ApiStandIn, w: _Watcher, backlog: List[bytes], timeout: int) -> None:
        for start in range(0, len(backlog), 256):
            self._chunk(b"".join(backlog[start:start + 256]))
        now = time.monotonic()
        deadline = now + timeout if timeout > 0 else None
        next_bookmark = now + si.bookmark_interval if w.bookmarks else None
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                self.wfile.write(b"0\r\n\r\n")
                return
            if next_bookmark is not None and now >= next_bookmark:
                line = si._bookmark(w)
                if line is not None:
                    self._chunk(line)
                    next_bookmark = now + si.bookmark_interval
            waits = [t - now for t in (deadline, next_bookmark) if t is not None]
            try:
                item = w.queue.get(timeout=max(0.0, min(waits)) if waits else None)
            except queue.Empty:
                continue
            batch: List[bytes] = []
            size = 0
            while item is not _DROP:
                batch.append(item)
                size += len(item)
                if size >= 1 << 18:
                    break
                try:
                    item = w.queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._chunk(b"".join(batch))
            if item is _DROP:
                _shutdown(self.connection)
                return


def _verb(method: str, name: Optional[str], sub: Optional[str],
          query: Dict[str, str]) -> Optional[str]:
    if name is None:
        if method == "GET":
            return "watch" if query.get("watch") in ("true", "1") else "list"
        if method == "DELETE":
            return "deletecollection"
        return "create" if method == "POST" else None
    verbs = {"GET": "get", "PUT": "update", "PATCH": "patch"}
    if sub is None:
        verbs["DELETE"] = "delete"
    return verbs.get(method)


def _delete_dry_run(verb: str, body: bytes) -> bool:
    """Whether a delete's DeleteOptions body (where client-go puts dryRun) asks for one."""
    if verb not in ("delete", "deletecollection") or not body:
        return False
    try:
        options = json.loads(body)
    except ValueError:
        return False
    return isinstance(options, dict) and options.get("dryRun") == ["All"]


def _request_object(body: bytes, content_type: Optional[str]) -> Any:
    """A request's body: JSON, or the protobuf kubectl's typed clients send, in the JSON form
    the server would hold (standin_proto; 415 naming what its tables do not describe)."""
    from . import standin_proto

    if (content_type or "").split(";")[0].strip() != standin_proto.PROTOBUF:
        return _parse_body(body)
    try:
        return standin_proto.decode(body)
    except standin_proto.Unsupported as exc:
        raise StandInError(415, str(exc), reason="UnsupportedMediaType") from None
    except standin_proto.ProtobufError as exc:
        raise _bad_request(f"the request body is not Kubernetes protobuf: {exc}") from None


def _parse_body(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError as exc:
        raise _bad_request(f"the request body is not JSON: {exc}") from None


def _patcher(kind: Kind, content_type: Optional[str], patch: Any) -> Callable[[dict], Any]:
    ctype = (content_type or "").split(";")[0].strip()
    if ctype == STRATEGIC_PATCH and not kind.custom:
        if not isinstance(patch, dict):
            raise _bad_request("a strategic merge patch must be a JSON object")
        schema = standin_patch.schema_of(kind.group, kind.kind)
        return lambda doc: standin_patch.strategic_merge(doc, patch, schema)
    if ctype == MERGE_PATCH:
        if not isinstance(patch, dict):
            raise _bad_request("a merge patch must be a JSON object")
        return lambda doc: merge_patch(doc, patch)
    if ctype == JSON_PATCH:
        if not isinstance(patch, list):
            raise _bad_request("a JSON patch must be a list of operations")
        return lambda doc: json_patch(doc, patch)
    accepted = [JSON_PATCH, MERGE_PATCH, APPLY_PATCH] + ([] if kind.custom else [STRATEGIC_PATCH])
    raise StandInError(415, f"the body of the request was in an unknown format - accepted media "
                            f"types include: {', '.join(accepted)}", reason="UnsupportedMediaType")
