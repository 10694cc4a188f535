"""Authentication, RBAC authorization and TLS material for the API stand-in (``standin.py``).

The agent runs in-cluster with a ServiceAccount token and the RBAC of ``deploy/rbac.yaml``;
these are the parts of kube-apiserver that decide whether such a request is answered at all,
kept here as plain functions so that a test can also use them offline (no server): replay the
requests an agent made against a changed RBAC and see which ones a real cluster would refuse.

What follows kube-apiserver:

- ``request_attributes``: what its RequestInfo resolver makes of a method, path and query
  (resource or non-resource request; verb, including list/watch for a GET without a name, a
  name taken from ``fieldSelector=metadata.name=X`` on list and watch, deletecollection; the
  namespace of ``/api/v1/namespaces/NAME`` is NAME). It works on any path, served or not,
  because the real server authorizes a request before it looks for a handler.
- ``authorize``: the privileged ``system:masters`` group, then RBAC: ClusterRoleBindings (every
  namespace and the cluster scope), then the RoleBindings of the request's namespace; Role and
  ClusterRole rules matched on verb, API group, resource (``*``, ``res/sub``, ``*/sub``) and
  resourceNames; subjects User, Group and ServiceAccount (whose namespace defaults to the
  binding's). A binding whose role is missing adds the text the real server appends to the
  refusal (``RBAC: clusterrole.rbac.authorization.k8s.io "x" not found``).
- The default grants of a new cluster: ``system:public-info-viewer`` (``/healthz``,
  ``/livez``, ``/readyz``, ``/version``: everyone), ``system:discovery`` (``/api``, ``/apis``,
  ``/openapi`` and below, and the same probes: authenticated users only) and
  ``system:basic-user`` (creating SelfSubjectAccessReviews, SelfSubjectRulesReviews and
  SelfSubjectReviews: authenticated users). They are built in, not objects in the store.
- ``forbidden_status``: the 403 Status, message and details as the server writes them.

What it does not: ClusterRole ``aggregationRule`` (an aggregated role has only the rules
written in it), the other bootstrap roles and bindings (cluster-admin and
the rest do not exist unless a test creates them), the Node and Webhook authorizers, ABAC,
impersonation, escalation checks on writes to RBAC objects, JWT tokens (``TokenRegistry`` hands
out opaque random strings; the real ServiceAccount tokens are signed JWTs with an audience and
an expiry), client certificates.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
import threading
from dataclasses import dataclass, field
from typing import (Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence,
                    Tuple, Union)
from urllib.parse import unquote

RBAC_GROUP = "rbac.authorization.k8s.io"
RBAC_KINDS = ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")

ANONYMOUS = "system:anonymous"
UNAUTHENTICATED = "system:unauthenticated"
AUTHENTICATED = "system:authenticated"
MASTERS = "system:masters"
ADMIN_USER = "kubernetes-admin"

# The names the API server answers to inside a cluster, and loopback: the server
# certificate covers all of them, so an in-cluster config verifies whichever is used.
SERVICE_DNS_NAMES = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                     "kubernetes.default.svc.cluster.local")
LOOPBACK_ADDRESSES = ("127.0.0.1", "::1")

_DEFAULT_NAMESPACE = "default"


# ---------------------------------------------------------------------------------------
# Users and tokens


@dataclass(frozen=True)
class UserInfo:
    """Who a request is from, as authentication found it."""

    name: str
    groups: Tuple[str, ...] = ()


ANONYMOUS_USER = UserInfo(ANONYMOUS, (UNAUTHENTICATED,))


def service_account_user(namespace: str, name: str) -> UserInfo:
    """The user a ServiceAccount's token authenticates as."""
    return UserInfo(f"system:serviceaccount:{namespace}:{name}",
                    ("system:serviceaccounts", f"system:serviceaccounts:{namespace}",
                     AUTHENTICATED))


@dataclass
class _Token:
    user: UserInfo
    account: Optional[Tuple[str, str, str]]     # (namespace, name, uid) of a bound SA token
    revoked: bool = False


class Unauthenticated(Exception):
    """A request carried a bearer token the server does not accept (-> 401)."""


class TokenRegistry:
    """The bearer tokens a stand-in accepts. Tokens are opaque random strings (real
    ServiceAccount tokens are JWTs; nothing here reads them). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: Dict[str, _Token] = {}

    def issue(self, user: UserInfo, account: Optional[Tuple[str, str, str]] = None) -> str:
        """A new token for `user`; `account` (namespace, name, uid) binds it to that
        ServiceAccount object, so it dies with it."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = _Token(user, account)
        return token

    def revoke(self, token: str) -> bool:
        """Stop accepting `token`; False if it was never issued here."""
        with self._lock:
            entry = self._tokens.get(token)
            if entry is None:
                return False
            entry.revoked = True
            return True

    def account_of(self, token: str) -> Optional[Tuple[str, str, str]]:
        """The ServiceAccount a token was issued for (revoked or not), or None."""
        with self._lock:
            entry = self._tokens.get(token)
        return entry.account if entry is not None else None

    def authenticate(self, authorization: Optional[str],
                     account_uid: Callable[[str, str], Optional[str]]) -> UserInfo:
        """The user of a request from its Authorization header. No bearer token is the
        anonymous user; an unknown, revoked or orphaned one raises Unauthenticated.
        `account_uid(namespace, name)` is the uid of the live ServiceAccount, or None."""
        token = bearer_token(authorization)
        if token is None:
            return ANONYMOUS_USER
        with self._lock:
            entry = self._tokens.get(token)
        if entry is None or entry.revoked:
            raise Unauthenticated()
        if entry.account is not None:
            namespace, name, uid = entry.account
            if account_uid(namespace, name) != uid:     # deleted (or deleted and re-made)
                raise Unauthenticated()
        return entry.user


def bearer_token(header: Optional[str]) -> Optional[str]:
    """The token of an ``Authorization: Bearer`` header, or None when there is none (another
    scheme, or an empty token, is no credential at all, as the real bearer authenticator
    treats it)."""
    if not header:
        return None
    parts = header.split(" ", 2)
    if len(parts) < 2 or parts[0].lower() != "bearer" or not parts[1]:
        return None
    return parts[1]


# ---------------------------------------------------------------------------------------
# Request attributes


@dataclass(frozen=True)
class RequestAttributes:
    """What authorization sees of a request (kube-apiserver's authorizer.Attributes).
    ``namespace`` is "" for the cluster scope, ``name`` "" when the request names nothing."""

    verb: str
    resource: str = ""
    api_group: str = ""
    namespace: str = ""
    name: str = ""
    subresource: str = ""
    api_version: str = ""
    resource_request: bool = True
    path: str = ""

    @classmethod
    def non_resource(cls, verb: str, path: str) -> "RequestAttributes":
        return cls(verb=verb, resource_request=False, path=path)

    def describe(self) -> str:
        """A short human form, for test failure messages."""
        if not self.resource_request:
            return f"{self.verb} {self.path}"
        res = self.resource + (f".{self.api_group}" if self.api_group else "")
        res += f"/{self.subresource}" if self.subresource else ""
        where = f" in {self.namespace}" if self.namespace else " (cluster scope)"
        return f"{self.verb} {res}{' ' + repr(self.name) if self.name else ''}{where}"


_METHOD_VERBS = {"POST": "create", "GET": "get", "HEAD": "get", "PUT": "update",
                 "PATCH": "patch", "DELETE": "delete"}
_SPECIAL_VERBS = ("proxy", "watch")             # /api/v1/watch/..., /api/v1/proxy/...
_NAMESPACE_SUBRESOURCES = ("status", "finalize")


def request_attributes(method: str, path: str, query: Mapping[str, str]) -> RequestAttributes:
    """The attributes kube-apiserver's RequestInfo resolver gives a request. `query` holds one
    value per parameter (the last one, as the stand-in reads them)."""
    parts = [unquote(p) for p in path.split("/") if p]
    if len(parts) < 3 or parts[0] not in ("api", "apis"):
        return RequestAttributes.non_resource(method.lower(), path)
    rest = parts[1:]
    group = ""
    if parts[0] == "apis":
        if len(rest) < 3:       # /apis/GROUP/VERSION is discovery, not a resource
            return RequestAttributes.non_resource(method.lower(), path)
        group, rest = rest[0], rest[1:]
    version, rest = rest[0], rest[1:]
    if rest[0] in _SPECIAL_VERBS:
        verb, rest = rest[0], rest[1:]
    else:
        verb = _METHOD_VERBS.get(method.upper(), "")
    namespace = ""
    if rest and rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in _NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
    resource = rest[0] if rest else ""
    name = rest[1] if len(rest) >= 2 else ""
    sub = rest[2] if len(rest) >= 3 and verb != "proxy" else ""
    if not name and verb == "delete":
        verb = "deletecollection"
    if not name and verb == "get":
        verb = "watch" if query.get("watch") in ("true", "1") else "list"
        name = _exact_name(query.get("fieldSelector") or "")
    return RequestAttributes(verb=verb, resource=resource, api_group=group, namespace=namespace,
                             name=name, subresource=sub, api_version=version, path=path)


def _exact_name(selector: str) -> str:
    """The X of a ``metadata.name=X`` (or ``==``) term of a field selector, if it is a valid
    path segment: a list or watch so narrowed is authorized as a request for that name."""
    for term in selector.split(","):
        for op in ("==", "="):
            key, sep, value = term.partition(op)
            if sep and not key.endswith("!"):
                if key.strip() == "metadata.name":
                    value = value.strip()
                    if value not in ("", ".", "..") and "/" not in value and "%" not in value:
                        return value
                break
    return ""


# ---------------------------------------------------------------------------------------
# RBAC


@dataclass(frozen=True)
class Grant:
    """The rule that allowed a request: which binding, which role, which rule of it."""

    binding_kind: str
    binding_name: str
    binding_namespace: str      # "" for a ClusterRoleBinding
    role_kind: str
    role_name: str
    role_namespace: str         # "" for a ClusterRole
    rule_index: int

    def __str__(self) -> str:
        binding = f"{self.binding_namespace}/{self.binding_name}" if self.binding_namespace \
            else self.binding_name
        role = f"{self.role_namespace}/{self.role_name}" if self.role_namespace else self.role_name
        return (f'{self.binding_kind} "{binding}" of {self.role_kind} "{role}" '
                f"rule {self.rule_index}")


@dataclass(frozen=True)
class Decision:
    """An authorization answer. ``grant`` names the RBAC rule that allowed it (None when a
    built-in grant did: ``via`` says which); ``reason`` is what the real server appends to
    the message of a refusal ("" or "RBAC: ...")."""

    allowed: bool
    grant: Optional[Grant] = None
    via: str = ""
    reason: str = ""

    def __bool__(self) -> bool:
        return self.allowed


# The default non-resource grants every cluster has (built in here, not stored objects):
# (ClusterRole name, groups bound, URL patterns); the verb is always "get".
_PROBES = ("/healthz", "/livez", "/readyz", "/version", "/version/")
_BUILTIN_NON_RESOURCE: Tuple[Tuple[str, Tuple[str, ...], Tuple[str, ...]], ...] = (
    ("system:public-info-viewer", (AUTHENTICATED, UNAUTHENTICATED), _PROBES),
    ("system:discovery", (AUTHENTICATED,),
     ("/api", "/api/*", "/apis", "/apis/*", "/openapi", "/openapi/*") + _PROBES),
)


# system:basic-user, bound to every authenticated user: the reviews of oneself
# ((API group, resource) -> created by anyone authenticated: kubectl auth can-i, whoami).
_SELF_REVIEWS = frozenset({("authorization.k8s.io", "selfsubjectaccessreviews"),
                           ("authorization.k8s.io", "selfsubjectrulesreviews"),
                           ("authentication.k8s.io", "selfsubjectreviews")})


def _has(values: Any, wanted: str) -> bool:
    return isinstance(values, list) and ("*" in values or wanted in values)


def rule_allows(rule: Mapping[str, Any], attrs: RequestAttributes) -> bool:
    """Whether one PolicyRule covers a request, as RBAC matches them."""
    if not _has(rule.get("verbs"), attrs.verb):
        return False
    if not attrs.resource_request:
        return any(_url_matches(pattern, attrs.path)
                   for pattern in rule.get("nonResourceURLs") or ())
    if not _has(rule.get("apiGroups"), attrs.api_group):
        return False
    combined = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    if not any(r == "*" or r == combined
               or (attrs.subresource and r == f"*/{attrs.subresource}")
               for r in rule.get("resources") or ()):
        return False
    names = rule.get("resourceNames") or ()
    return not names or attrs.name in names


def _url_matches(pattern: str, path: str) -> bool:
    if pattern == "*" or pattern == path:
        return True
    return pattern.endswith("*") and path.startswith(pattern[:-1])


def _applies(subject: Mapping[str, Any], user: str, groups: Sequence[str],
             binding_namespace: str) -> bool:
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "User":
        return user == name
    if kind == "Group":
        return name in groups
    if kind == "ServiceAccount":
        namespace = subject.get("namespace") or binding_namespace
        return bool(namespace) and user == f"system:serviceaccount:{namespace}:{name}"
    return False


def _meta(obj: Mapping[str, Any]) -> Tuple[str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("name") or "", meta.get("namespace") or ""


class _Rbac:
    """The RBAC objects of one moment, indexed for lookups."""

    def __init__(self, objects: Iterable[Mapping[str, Any]]):
        self.cluster_roles: Dict[str, Mapping[str, Any]] = {}
        self.roles: Dict[Tuple[str, str], Mapping[str, Any]] = {}
        self.cluster_bindings: List[Mapping[str, Any]] = []
        self.bindings: Dict[str, List[Mapping[str, Any]]] = {}
        for obj in objects:
            if not isinstance(obj, Mapping) or obj.get("apiVersion") not in (
                    None, f"{RBAC_GROUP}/v1"):
                continue
            kind = obj.get("kind")
            name, namespace = _meta(obj)
            if kind == "ClusterRole":
                self.cluster_roles[name] = obj
            elif kind == "Role":
                self.roles[(namespace or _DEFAULT_NAMESPACE, name)] = obj
            elif kind == "ClusterRoleBinding":
                self.cluster_bindings.append(obj)
            elif kind == "RoleBinding":
                self.bindings.setdefault(namespace or _DEFAULT_NAMESPACE, []).append(obj)
        self.cluster_bindings.sort(key=lambda b: _meta(b)[0])
        for items in self.bindings.values():
            items.sort(key=lambda b: _meta(b)[0])

    def _role_of(self, binding: Mapping[str, Any], namespace: str
                 ) -> Union[Tuple[str, str, str, Sequence[Any]], str]:
        """(role kind, name, namespace, rules) a binding grants, or the error text the real
        server reports for a reference it cannot resolve."""
        ref = binding.get("roleRef") or {}
        kind, name = ref.get("kind"), ref.get("name") or ""
        if kind == "ClusterRole":
            role = self.cluster_roles.get(name)
            if role is None:
                return f'clusterrole.{RBAC_GROUP} "{name}" not found'
            return kind, name, "", role.get("rules") or ()
        if kind == "Role":
            role = self.roles.get((namespace, name)) if namespace else None
            if role is None:
                return f'role.{RBAC_GROUP} "{name}" not found'
            return kind, name, namespace, role.get("rules") or ()
        return f"unsupported role reference kind: {_go_quote(str(kind))}"

    def visit(self, user: str, groups: Sequence[str], namespace: str
              ) -> Iterator[Union[Tuple[Grant, Mapping[str, Any]], str]]:
        """Every (grant, rule) that applies to the user in `namespace` ("" = cluster scope),
        in the real resolver's order, with an error text for each unresolvable binding."""
        sources = [("ClusterRoleBinding", b, "") for b in self.cluster_bindings]
        if namespace:
            sources += [("RoleBinding", b, namespace) for b in self.bindings.get(namespace, ())]
        for binding_kind, binding, binding_ns in sources:
            if not any(isinstance(s, Mapping) and _applies(s, user, groups, binding_ns)
                       for s in binding.get("subjects") or ()):
                continue
            role = self._role_of(binding, binding_ns)
            if isinstance(role, str):
                yield role
                continue
            role_kind, role_name, role_ns, rules = role
            for index, rule in enumerate(rules):
                if isinstance(rule, Mapping):
                    yield (Grant(binding_kind, _meta(binding)[0], binding_ns, role_kind,
                                 role_name, role_ns, index), rule)


def authorize(rbac_objects: Iterable[Mapping[str, Any]], user: str, groups: Sequence[str],
              attrs: RequestAttributes) -> Decision:
    """Whether kube-apiserver (authorization modes RBAC, with the default non-resource
    grants) allows `user` in `groups` the request `attrs`, given these RBAC objects (any
    iterable of dicts: other kinds are ignored, so a whole manifest can be passed)."""
    if MASTERS in groups:
        return Decision(True, via=f"group {MASTERS}")
    if attrs.resource_request and attrs.verb == "create" and AUTHENTICATED in groups \
            and (attrs.api_group, attrs.resource) in _SELF_REVIEWS:
        return Decision(True, via="built-in ClusterRole system:basic-user")
    if not attrs.resource_request and attrs.verb == "get":
        for role, bound, patterns in _BUILTIN_NON_RESOURCE:
            if any(g in groups for g in bound) \
                    and any(_url_matches(p, attrs.path) for p in patterns):
                return Decision(True, via=f"built-in ClusterRole {role}")
    errors: List[str] = []
    for item in _Rbac(rbac_objects).visit(user, groups, attrs.namespace):
        if isinstance(item, str):
            errors.append(item)
        elif rule_allows(item[1], attrs):
            return Decision(True, grant=item[0], via=f"RBAC: allowed by {item[0]}")
    return Decision(False, reason=f"RBAC: {_aggregate(errors)}" if errors else "")


def _aggregate(errors: Sequence[str]) -> str:
    """The text of Kubernetes' aggregate error: one message alone, several (duplicates
    dropped) joined in brackets."""
    unique = list(dict.fromkeys(errors))
    return unique[0] if len(unique) == 1 else "[" + ", ".join(unique) + "]"


# -- impersonation, reviews, kubeconfigs ---------------------------------------------------


def impersonation(target: str, groups: Sequence[str]
                  ) -> Tuple[UserInfo, List[RequestAttributes]]:
    """The user a request impersonating `target` in `groups` acts as (a ServiceAccount's own
    groups added, and system:authenticated), and the requests (verb impersonate on users,
    serviceaccounts, groups) the impersonating user must be allowed."""
    account = target.split(":")
    if len(account) == 4 and account[:2] == ["system", "serviceaccount"]:
        checks = [RequestAttributes(verb="impersonate", resource="serviceaccounts",
                                    namespace=account[2], name=account[3])]
        extra = list(service_account_user(account[2], account[3]).groups)
    else:
        checks = [RequestAttributes(verb="impersonate", resource="users", name=target)]
        extra = [AUTHENTICATED]
    checks += [RequestAttributes(verb="impersonate", resource="groups", name=g) for g in groups]
    return UserInfo(target, tuple(dict.fromkeys(list(groups) + extra))), checks


def review(kind: str, api_version: str, body: Mapping[str, Any], user: UserInfo,
           decide: Callable[[UserInfo, RequestAttributes], Decision]) -> Dict[str, Any]:
    """The answer to a SelfSubjectAccessReview (``decide`` is the authorizer in force) or a
    SelfSubjectReview; ValueError for a review that asks nothing or two things."""
    out: Dict[str, Any] = {"kind": kind, "apiVersion": api_version,
                           "metadata": {"creationTimestamp": None}}
    if kind == "SelfSubjectReview":
        out["status"] = {"userInfo": {"username": user.name, "groups": list(user.groups)}}
        return out
    spec = body.get("spec") if isinstance(body.get("spec"), Mapping) else {}
    res, non = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
    if isinstance(res, Mapping) == isinstance(non, Mapping):
        raise ValueError(f'{kind}.authorization.k8s.io "" is invalid: spec.resourceAttributes: '
                         f'Invalid value: "null": exactly one of nonResourceAttributes or '
                         f"resourceAttributes must be specified")
    if isinstance(res, Mapping):
        def text(key: str) -> str:
            return str(res.get(key) or "")
        attrs = RequestAttributes(verb=text("verb"), resource=text("resource"),
                                  api_group=text("group"), namespace=text("namespace"),
                                  name=text("name"), subresource=text("subresource"),
                                  api_version=text("version"))
    else:
        attrs = RequestAttributes.non_resource(str(non.get("verb") or ""),
                                               str(non.get("path") or ""))
    decision = decide(user, attrs)
    status: Dict[str, Any] = {"allowed": decision.allowed}
    reason = decision.via if decision.allowed else decision.reason
    if reason:
        status["reason"] = reason
    out.update(spec=dict(spec), status=status)
    return out


def kubeconfig(server: str, ca_pem: Optional[bytes], user: str, token: str,
               namespace: Optional[str] = None, name: str = "pyxlb-lab") -> Dict[str, Any]:
    """A kubeconfig with one cluster (`server`, its CA embedded when given), one user (a
    bearer token) and one context naming them (and `namespace`, if given)."""
    import base64

    cluster: Dict[str, Any] = {"server": server}
    if ca_pem is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
    context: Dict[str, Any] = {"cluster": name, "user": user}
    if namespace:
        context["namespace"] = namespace
    return {"apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": name, "cluster": cluster}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": name, "context": context}],
            "current-context": name}


# -- least privilege ----------------------------------------------------------------------


@dataclass(frozen=True)
class Permission:
    """One verb on one resource (or non-resource URL) of one rule of one role."""

    role_kind: str
    role_namespace: str         # "" for a ClusterRole
    role_name: str
    rule_index: int
    verb: str
    resource: str

    def __str__(self) -> str:
        role = f"{self.role_namespace}/{self.role_name}" if self.role_namespace else self.role_name
        return f"{self.role_kind} {role} rule {self.rule_index}: {self.verb} {self.resource}"


def _rule_targets(rule: Mapping[str, Any]) -> Tuple[str, List[str]]:
    if rule.get("nonResourceURLs"):
        return "nonResourceURLs", list(rule["nonResourceURLs"])
    return "resources", list(rule.get("resources") or ())


def permissions_of(rbac_objects: Iterable[Mapping[str, Any]]) -> List[Permission]:
    """Every (rule, verb, resource) the Roles and ClusterRoles among these objects grant."""
    out: List[Permission] = []
    for obj in rbac_objects:
        if not isinstance(obj, Mapping) or obj.get("kind") not in ("Role", "ClusterRole"):
            continue
        name, namespace = _meta(obj)
        if obj["kind"] == "Role":
            namespace = namespace or _DEFAULT_NAMESPACE
        else:
            namespace = ""
        for index, rule in enumerate(obj.get("rules") or ()):
            _, targets = _rule_targets(rule)
            for verb in rule.get("verbs") or ():
                for target in targets:
                    out.append(Permission(obj["kind"], namespace, name, index, verb, target))
    return out


def without_permission(rbac_objects: Iterable[Mapping[str, Any]],
                       perm: Permission) -> List[Mapping[str, Any]]:
    """The same objects with one verb on one resource taken out of one rule (the rule is
    split so that everything else it granted stays granted). Indexes of the other rules
    of that role are kept; the inputs are not changed."""
    out: List[Mapping[str, Any]] = []
    for obj in rbac_objects:
        name, namespace = _meta(obj) if isinstance(obj, Mapping) else ("", "")
        if perm.role_kind == "Role":
            namespace = namespace or _DEFAULT_NAMESPACE
        if not isinstance(obj, Mapping) or obj.get("kind") != perm.role_kind \
                or name != perm.role_name \
                or (perm.role_kind == "Role" and namespace != perm.role_namespace):
            out.append(obj)
            continue
        rules = list(obj.get("rules") or ())
        rule = dict(rules[perm.rule_index])
        key, targets = _rule_targets(rule)
        others = [t for t in targets if t != perm.resource]
        verbs = [v for v in rule.get("verbs") or () if v != perm.verb]
        rules[perm.rule_index] = dict(rule, **{key: others}) if others else \
            dict(rule, verbs=[])
        if verbs:
            rules.append(dict(rule, **{key: [perm.resource], "verbs": verbs}))
        out.append(dict(obj, rules=rules))
    return out


@dataclass(frozen=True)
class Request:
    """A request to re-check offline: who made it and what it asked."""

    user: str
    groups: Tuple[str, ...]
    attributes: RequestAttributes


def unused_permissions(rbac_objects: Sequence[Mapping[str, Any]],
                       requests: Iterable[Any]) -> List[Permission]:
    """The permissions of these roles that none of `requests` needs: taking any one of them
    away leaves every request that was allowed still allowed. `requests` are ``Request``s or
    audit records (anything with ``user``, ``groups`` and ``attributes``); the refused ones
    and those without a user (401s) are ignored."""
    objects = list(rbac_objects)
    allowed = [r for r in requests if getattr(r, "user", None) is not None
               and authorize(objects, r.user, r.groups, r.attributes)]
    unused = []
    for perm in permissions_of(objects):
        reduced = without_permission(objects, perm)
        if all(authorize(reduced, r.user, r.groups, r.attributes) for r in allowed):
            unused.append(perm)
    return unused


# ---------------------------------------------------------------------------------------
# Refusals


_HTML = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


def _go_quote(text: str) -> str:
    """Go's %q for the strings that occur here (double quotes, backslash escapes)."""
    out = ['"']
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7f:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def forbidden_message(user: str, attrs: RequestAttributes) -> str:
    """The sentence saying who cannot do what, before the server wraps it."""
    if not attrs.resource_request:
        return f"User {_go_quote(user)} cannot {attrs.verb} path {_go_quote(attrs.path)}"
    resource = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    head = (f"User {_go_quote(user)} cannot {attrs.verb} resource {_go_quote(resource)} "
            f"in API group {_go_quote(attrs.api_group)}")
    if attrs.namespace:
        return f"{head} in the namespace {_go_quote(attrs.namespace)}"
    return f"{head} at the cluster scope"


def forbidden_status(user: str, attrs: RequestAttributes, reason: str = "") -> Dict[str, Any]:
    """The whole 403 Status kube-apiserver answers a refused request with: the message
    (HTML-escaped, the authorizer's reason appended) wrapped as ``<resource>[.<group>]
    ["<name>"] is forbidden: ...``, and details with name, group and kind (the plural), each
    left out when empty (the Go fields are omitempty)."""
    msg = forbidden_message(user, attrs).translate(_HTML)
    if reason:
        msg = f"{msg}: {reason}"
    details: Dict[str, Any] = {}
    if not attrs.resource_request:
        message = f"forbidden: {msg}"
    else:
        qualified = f"{attrs.resource}.{attrs.api_group}" if attrs.api_group else attrs.resource
        if attrs.name:
            message = f"{qualified} {_go_quote(attrs.name)} is forbidden: {msg}"
        else:
            message = f"{qualified} is forbidden: {msg}"
        if attrs.name:
            details["name"] = attrs.name
        if attrs.api_group:
            details["group"] = attrs.api_group
        if attrs.resource:
            details["kind"] = attrs.resource
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": "Forbidden", "details": details, "code": 403}


# ---------------------------------------------------------------------------------------
# Audit


@dataclass
class AuditRecord:
    """One request that reached authorization (or failed authentication: ``user`` None,
    code 401). ``code`` is the HTTP status answered; it is set just before the answer is
    sent (a watch: when its stream starts)."""

    user: Optional[str]
    groups: Tuple[str, ...]
    verb: str
    api_group: str
    resource: str
    subresource: str
    namespace: str
    name: str
    allowed: bool
    code: Optional[int] = None
    path: str = ""
    api_version: str = ""
    resource_request: bool = True
    grant: Optional[Grant] = field(default=None, compare=False)

    @classmethod
    def of(cls, user: Optional[UserInfo], attrs: RequestAttributes,
           decision: Optional[Decision]) -> "AuditRecord":
        return cls(user.name if user else None, user.groups if user else (), attrs.verb,
                   attrs.api_group, attrs.resource, attrs.subresource, attrs.namespace,
                   attrs.name, bool(decision and decision.allowed), None, attrs.path,
                   attrs.api_version, attrs.resource_request,
                   decision.grant if decision else None)

    @property
    def attributes(self) -> RequestAttributes:
        return RequestAttributes(verb=self.verb, resource=self.resource,
                                 api_group=self.api_group, namespace=self.namespace,
                                 name=self.name, subresource=self.subresource,
                                 api_version=self.api_version,
                                 resource_request=self.resource_request, path=self.path)


# ---------------------------------------------------------------------------------------
# TLS


@dataclass(frozen=True)
class TlsMaterial:
    """A fresh CA and a server certificate it signed, PEM-encoded."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


def make_tls_material(hosts: Sequence[str], valid_days: float = 1.0) -> TlsMaterial:
    """A new CA (EC P-256) and a server certificate for `hosts` (addresses become IP
    SANs, names DNS SANs) plus loopback and the in-cluster names of the API server.
    Needs the ``cryptography`` package, imported here so the stand-in runs without it
    when TLS is off."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=valid_days)

    def usage(**on: bool) -> Any:
        names = ("digital_signature", "content_commitment", "key_encipherment",
                 "data_encipherment", "key_agreement", "key_cert_sign", "crl_sign",
                 "encipher_only", "decipher_only")
        return x509.KeyUsage(**{n: on.get(n, False) for n in names})

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pyxlb-standin-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage(digital_signature=True, key_cert_sign=True, crl_sign=True),
                       critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256()))

    ips: List[Any] = []
    dns: List[str] = []
    for host in list(hosts) + list(LOOPBACK_ADDRESSES) + list(SERVICE_DNS_NAMES):
        try:
            addr = ipaddress.ip_address(host.strip("[]").split("%")[0])
        except ValueError:
            if host and host not in dns:
                dns.append(host)
            continue
        if not addr.is_unspecified and addr not in ips:   # 0.0.0.0 / :: name no address
            ips.append(addr)
    sans = [x509.DNSName(n) for n in dns] + [x509.IPAddress(a) for a in ips]

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256()))

    pem = serialization.Encoding.PEM
    return TlsMaterial(
        ca_pem=ca_cert.public_bytes(pem),
        cert_pem=cert.public_bytes(pem),
        key_pem=key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))


__all__ = [
    "ADMIN_USER", "ANONYMOUS", "ANONYMOUS_USER", "AUTHENTICATED", "AuditRecord", "Decision",
    "Grant", "MASTERS", "Permission", "RBAC_KINDS", "Request", "RequestAttributes",
    "TlsMaterial", "TokenRegistry", "UNAUTHENTICATED", "Unauthenticated", "UserInfo",
    "authorize", "bearer_token", "forbidden_message", "forbidden_status", "impersonation",
    "kubeconfig", "make_tls_material", "permissions_of", "request_attributes", "review",
    "rule_allows", "service_account_user", "unused_permissions", "without_permission",
]
