"""The protobuf schemas of the objects kubectl's typed clients send the API stand-in.

``kubectl create namespace|configmap|secret|serviceaccount|deployment|service|role|
rolebinding|clusterrole|clusterrolebinding|token`` and ``kubectl auth can-i|whoami`` post their
objects as ``application/vnd.kubernetes.protobuf``. ``standin_proto`` turns those bodies into the
JSON the API server would store; this module is its data: for every message those bodies can
hold, field number -> (JSON name, type, flags), in the order of the Go struct (the order the
server writes the JSON in).

Field numbers and types are those of the generated.proto files of k8s.io/api and
k8s.io/apimachinery v0.33.0 (core/v1, apps/v1, rbac/v1, authentication/v1, authorization/v1,
meta/v1); JSON names, ``omitempty`` and pointer fields from the json tags and Go types of their
types.go. Numbers are never reused upstream, so a body from an older kubectl (1.32) reads the
same.

A type is a message name ("core/v1 ServicePort") or one of:

- ``string``, ``int`` (int32 and int64 varints, two's complement), ``bool``, ``bytes`` (base64
  in JSON);
- ``time``: meta/v1 Time, a Timestamp {1: seconds, 2: nanos}, RFC 3339 in whole seconds in JSON
  (nanos are dropped, as the server drops them), an empty message is the zero time: null;
- ``intstr``: IntOrString {1: type, 2: intVal, 3: strVal}, a number or a string in JSON;
- ``quantity``: resource.Quantity {1: its canonical string};
- ``fieldsv1``: meta/v1 FieldsV1 {1: raw JSON}, the JSON itself;
- ``strings``: authentication's ExtraValue {1: repeated string}, a JSON list.

Flags: ``r`` repeated, ``m`` a map from strings to the type, ``p`` a pointer in Go (sent only
when set, and kept when set to a zero value), ``o`` omitempty (a zero scalar, an empty list or
map, a nil pointer is left out of the JSON; a struct never is). A field neither ``p`` nor ``o``
is always in the JSON: its zero value, or null for a list, map or pointer.

Messages named in ``NOT_DECODED`` are reachable from these kinds (a Deployment's pod template)
but no ``kubectl create`` shortcut fills them: a body holding one is refused, naming the field,
rather than read wrongly.
"""

from __future__ import annotations

from typing import Dict, Tuple

Field = Tuple[str, str, str]

# apiVersion -> the schema family of its messages
FAMILIES = {"v1": "core/v1", "apps/v1": "apps/v1", "rbac.authorization.k8s.io/v1": "rbac/v1",
            "authentication.k8s.io/v1": "authentication/v1",
            "authorization.k8s.io/v1": "authorization/v1"}

# the kinds a body may carry: (apiVersion, kind)
KINDS = (("v1", "Namespace"), ("v1", "ConfigMap"), ("v1", "Secret"), ("v1", "ServiceAccount"),
         ("v1", "Service"), ("apps/v1", "Deployment"),
         ("authentication.k8s.io/v1", "TokenRequest"),
         ("authentication.k8s.io/v1", "SelfSubjectReview"),
         ("authorization.k8s.io/v1", "SelfSubjectAccessReview"),
         ("rbac.authorization.k8s.io/v1", "Role"), ("rbac.authorization.k8s.io/v1", "ClusterRole"),
         ("rbac.authorization.k8s.io/v1", "RoleBinding"),
         ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"))

NOT_DECODED = frozenset({
    "core/v1 Affinity", "core/v1 ContainerResizePolicy", "core/v1 EnvFromSource", "core/v1 EnvVar",
    "core/v1 EphemeralContainer", "core/v1 HostAlias", "core/v1 Lifecycle", "core/v1 PodDNSConfig",
    "core/v1 PodOS", "core/v1 PodReadinessGate", "core/v1 PodResourceClaim",
    "core/v1 PodSchedulingGate", "core/v1 PodSecurityContext", "core/v1 Probe",
    "core/v1 SecurityContext", "core/v1 Toleration", "core/v1 TopologySpreadConstraint",
    "core/v1 Volume", "core/v1 VolumeDevice", "core/v1 VolumeMount",
})

MESSAGES: Dict[str, Dict[int, Field]] = {
    "core/v1 Namespace": {
        1: ("metadata", "meta/v1 ObjectMeta", "o"), 2: ("spec", "core/v1 NamespaceSpec", "o"),
        3: ("status", "core/v1 NamespaceStatus", "o")},
    "core/v1 ConfigMap": {
        1: ("metadata", "meta/v1 ObjectMeta", "o"), 4: ("immutable", "bool", "po"),
        2: ("data", "string", "mo"), 3: ("binaryData", "bytes", "mo")},
    "core/v1 Secret": {
        1: ("metadata", "meta/v1 ObjectMeta", "o"), 5: ("immutable", "bool", "po"),
        2: ("data", "bytes", "mo"), 4: ("stringData", "string", "mo"), 3: ("type", "string", "o")},
    "core/v1 ServiceAccount": {
        1: ("metadata", "meta/v1 ObjectMeta", "o"),
        2: ("secrets", "core/v1 ObjectReference", "ro"),
        3: ("imagePullSecrets", "core/v1 LocalObjectReference", "ro"),
        4: ("automountServiceAccountToken", "bool", "po")},
    "core/v1 Service": {
        1: ("metadata", "meta/v1 ObjectMeta", "o"), 2: ("spec", "core/v1 ServiceSpec", "o"),
        3: ("status", "core/v1 ServiceStatus", "o")},
    "apps/v1 Deployment": {
        1: ("metadata", "meta/v1 ObjectMeta", "o"), 2: ("spec", "apps/v1 DeploymentSpec", "o"),
        3: ("status", "apps/v1 DeploymentStatus", "o")},
    "authentication/v1 TokenRequest": {
        1: ("metadata", "meta/v1 ObjectMeta", "o"),
        2: ("spec", "authentication/v1 TokenRequestSpec", ""),
        3: ("status", "authentication/v1 TokenRequestStatus", "o")},
    "rbac/v1 Role": {
        1: ("metadata", "meta/v1 ObjectMeta", "o"), 2: ("rules", "rbac/v1 PolicyRule", "r")},
    "rbac/v1 ClusterRole": {
        1: ("metadata", "meta/v1 ObjectMeta", "o"), 2: ("rules", "rbac/v1 PolicyRule", "r"),
        3: ("aggregationRule", "rbac/v1 AggregationRule", "po")},
    "rbac/v1 RoleBinding": {
        1: ("metadata", "meta/v1 ObjectMeta", "o"), 2: ("subjects", "rbac/v1 Subject", "ro"),
        3: ("roleRef", "rbac/v1 RoleRef", "")},
    "rbac/v1 ClusterRoleBinding": {
        1: ("metadata", "meta/v1 ObjectMeta", "o"), 2: ("subjects", "rbac/v1 Subject", "ro"),
        3: ("roleRef", "rbac/v1 RoleRef", "")},
    "authorization/v1 SelfSubjectAccessReview": {
        1: ("metadata", "meta/v1 ObjectMeta", "o"),
        2: ("spec", "authorization/v1 SelfSubjectAccessReviewSpec", ""),
        3: ("status", "authorization/v1 SubjectAccessReviewStatus", "o")},
    "authentication/v1 SelfSubjectReview": {
        1: ("metadata", "meta/v1 ObjectMeta", "o"),
        2: ("status", "authentication/v1 SelfSubjectReviewStatus", "o")},
    "meta/v1 ObjectMeta": {
        1: ("name", "string", "o"), 2: ("generateName", "string", "o"),
        3: ("namespace", "string", "o"), 4: ("selfLink", "string", "o"), 5: ("uid", "string", "o"),
        6: ("resourceVersion", "string", "o"), 7: ("generation", "int", "o"),
        8: ("creationTimestamp", "time", "o"), 9: ("deletionTimestamp", "time", "po"),
        10: ("deletionGracePeriodSeconds", "int", "po"), 11: ("labels", "string", "mo"),
        12: ("annotations", "string", "mo"),
        13: ("ownerReferences", "meta/v1 OwnerReference", "ro"),
        14: ("finalizers", "string", "ro"),
        17: ("managedFields", "meta/v1 ManagedFieldsEntry", "ro")},
    "core/v1 NamespaceSpec": {
        1: ("finalizers", "string", "ro")},
    "core/v1 NamespaceStatus": {
        1: ("phase", "string", "o"), 2: ("conditions", "core/v1 NamespaceCondition", "ro")},
    "core/v1 ObjectReference": {
        1: ("kind", "string", "o"), 2: ("namespace", "string", "o"), 3: ("name", "string", "o"),
        4: ("uid", "string", "o"), 5: ("apiVersion", "string", "o"),
        6: ("resourceVersion", "string", "o"), 7: ("fieldPath", "string", "o")},
    "core/v1 LocalObjectReference": {
        1: ("name", "string", "o")},
    "core/v1 ServiceSpec": {
        1: ("ports", "core/v1 ServicePort", "ro"), 2: ("selector", "string", "mo"),
        3: ("clusterIP", "string", "o"), 18: ("clusterIPs", "string", "ro"),
        4: ("type", "string", "o"), 5: ("externalIPs", "string", "ro"),
        7: ("sessionAffinity", "string", "o"), 8: ("loadBalancerIP", "string", "o"),
        9: ("loadBalancerSourceRanges", "string", "ro"), 10: ("externalName", "string", "o"),
        11: ("externalTrafficPolicy", "string", "o"), 12: ("healthCheckNodePort", "int", "o"),
        13: ("publishNotReadyAddresses", "bool", "o"),
        14: ("sessionAffinityConfig", "core/v1 SessionAffinityConfig", "po"),
        19: ("ipFamilies", "string", "ro"), 17: ("ipFamilyPolicy", "string", "po"),
        20: ("allocateLoadBalancerNodePorts", "bool", "po"),
        21: ("loadBalancerClass", "string", "po"), 22: ("internalTrafficPolicy", "string", "po"),
        23: ("trafficDistribution", "string", "po")},
    "core/v1 ServiceStatus": {
        1: ("loadBalancer", "core/v1 LoadBalancerStatus", "o"),
        2: ("conditions", "meta/v1 Condition", "ro")},
    "apps/v1 DeploymentSpec": {
        1: ("replicas", "int", "po"), 2: ("selector", "meta/v1 LabelSelector", "p"),
        3: ("template", "core/v1 PodTemplateSpec", ""),
        4: ("strategy", "apps/v1 DeploymentStrategy", "o"), 5: ("minReadySeconds", "int", "o"),
        6: ("revisionHistoryLimit", "int", "po"), 7: ("paused", "bool", "o"),
        9: ("progressDeadlineSeconds", "int", "po")},
    "apps/v1 DeploymentStatus": {
        1: ("observedGeneration", "int", "o"), 2: ("replicas", "int", "o"),
        3: ("updatedReplicas", "int", "o"), 7: ("readyReplicas", "int", "o"),
        4: ("availableReplicas", "int", "o"), 5: ("unavailableReplicas", "int", "o"),
        9: ("terminatingReplicas", "int", "po"),
        6: ("conditions", "apps/v1 DeploymentCondition", "ro"), 8: ("collisionCount", "int", "po")},
    "authentication/v1 TokenRequestSpec": {
        1: ("audiences", "string", "r"), 4: ("expirationSeconds", "int", "p"),
        3: ("boundObjectRef", "authentication/v1 BoundObjectReference", "p")},
    "authentication/v1 TokenRequestStatus": {
        1: ("token", "string", ""), 2: ("expirationTimestamp", "time", "")},
    "rbac/v1 PolicyRule": {
        1: ("verbs", "string", "r"), 2: ("apiGroups", "string", "ro"),
        3: ("resources", "string", "ro"), 4: ("resourceNames", "string", "ro"),
        5: ("nonResourceURLs", "string", "ro")},
    "rbac/v1 AggregationRule": {
        1: ("clusterRoleSelectors", "meta/v1 LabelSelector", "ro")},
    "rbac/v1 Subject": {
        1: ("kind", "string", ""), 2: ("apiGroup", "string", "o"), 3: ("name", "string", ""),
        4: ("namespace", "string", "o")},
    "rbac/v1 RoleRef": {
        1: ("apiGroup", "string", ""), 2: ("kind", "string", ""), 3: ("name", "string", "")},
    "authorization/v1 SelfSubjectAccessReviewSpec": {
        1: ("resourceAttributes", "authorization/v1 ResourceAttributes", "po"),
        2: ("nonResourceAttributes", "authorization/v1 NonResourceAttributes", "po")},
    "authorization/v1 SubjectAccessReviewStatus": {
        1: ("allowed", "bool", ""), 4: ("denied", "bool", "o"), 2: ("reason", "string", "o"),
        3: ("evaluationError", "string", "o")},
    "authentication/v1 SelfSubjectReviewStatus": {
        1: ("userInfo", "authentication/v1 UserInfo", "o")},
    "meta/v1 OwnerReference": {
        5: ("apiVersion", "string", ""), 1: ("kind", "string", ""), 3: ("name", "string", ""),
        4: ("uid", "string", ""), 6: ("controller", "bool", "po"),
        7: ("blockOwnerDeletion", "bool", "po")},
    "meta/v1 ManagedFieldsEntry": {
        1: ("manager", "string", "o"), 2: ("operation", "string", "o"),
        3: ("apiVersion", "string", "o"), 4: ("time", "time", "po"),
        6: ("fieldsType", "string", "o"), 7: ("fieldsV1", "fieldsv1", "po"),
        8: ("subresource", "string", "o")},
    "core/v1 NamespaceCondition": {
        1: ("type", "string", ""), 2: ("status", "string", ""),
        4: ("lastTransitionTime", "time", "o"), 5: ("reason", "string", "o"),
        6: ("message", "string", "o")},
    "core/v1 ServicePort": {
        1: ("name", "string", "o"), 2: ("protocol", "string", "o"),
        6: ("appProtocol", "string", "po"), 3: ("port", "int", ""),
        4: ("targetPort", "intstr", "o"), 5: ("nodePort", "int", "o")},
    "core/v1 SessionAffinityConfig": {
        1: ("clientIP", "core/v1 ClientIPConfig", "po")},
    "core/v1 LoadBalancerStatus": {
        1: ("ingress", "core/v1 LoadBalancerIngress", "ro")},
    "meta/v1 Condition": {
        1: ("type", "string", ""), 2: ("status", "string", ""),
        3: ("observedGeneration", "int", "o"), 4: ("lastTransitionTime", "time", ""),
        5: ("reason", "string", ""), 6: ("message", "string", "")},
    "meta/v1 LabelSelector": {
        1: ("matchLabels", "string", "mo"),
        2: ("matchExpressions", "meta/v1 LabelSelectorRequirement", "ro")},
    "core/v1 PodTemplateSpec": {
        1: ("metadata", "meta/v1 ObjectMeta", "o"), 2: ("spec", "core/v1 PodSpec", "o")},
    "apps/v1 DeploymentStrategy": {
        1: ("type", "string", "o"), 2: ("rollingUpdate", "apps/v1 RollingUpdateDeployment", "po")},
    "apps/v1 DeploymentCondition": {
        1: ("type", "string", ""), 2: ("status", "string", ""), 6: ("lastUpdateTime", "time", "o"),
        7: ("lastTransitionTime", "time", "o"), 4: ("reason", "string", "o"),
        5: ("message", "string", "o")},
    "authentication/v1 BoundObjectReference": {
        1: ("kind", "string", "o"), 2: ("apiVersion", "string", "o"), 3: ("name", "string", "o"),
        4: ("uid", "string", "o")},
    "authorization/v1 ResourceAttributes": {
        1: ("namespace", "string", "o"), 2: ("verb", "string", "o"), 3: ("group", "string", "o"),
        4: ("version", "string", "o"), 5: ("resource", "string", "o"),
        6: ("subresource", "string", "o"), 7: ("name", "string", "o"),
        8: ("fieldSelector", "authorization/v1 FieldSelectorAttributes", "po"),
        9: ("labelSelector", "authorization/v1 LabelSelectorAttributes", "po")},
    "authorization/v1 NonResourceAttributes": {
        1: ("path", "string", "o"), 2: ("verb", "string", "o")},
    "authentication/v1 UserInfo": {
        1: ("username", "string", "o"), 2: ("uid", "string", "o"), 3: ("groups", "string", "ro"),
        4: ("extra", "strings", "mo")},
    "core/v1 ClientIPConfig": {
        1: ("timeoutSeconds", "int", "po")},
    "core/v1 LoadBalancerIngress": {
        1: ("ip", "string", "o"), 2: ("hostname", "string", "o"), 3: ("ipMode", "string", "po"),
        4: ("ports", "core/v1 PortStatus", "ro")},
    "meta/v1 LabelSelectorRequirement": {
        1: ("key", "string", ""), 2: ("operator", "string", ""), 3: ("values", "string", "ro")},
    "core/v1 PodSpec": {
        1: ("volumes", "core/v1 Volume", "ro"), 20: ("initContainers", "core/v1 Container", "ro"),
        2: ("containers", "core/v1 Container", "r"),
        34: ("ephemeralContainers", "core/v1 EphemeralContainer", "ro"),
        3: ("restartPolicy", "string", "o"), 4: ("terminationGracePeriodSeconds", "int", "po"),
        5: ("activeDeadlineSeconds", "int", "po"), 6: ("dnsPolicy", "string", "o"),
        7: ("nodeSelector", "string", "mo"), 8: ("serviceAccountName", "string", "o"),
        9: ("serviceAccount", "string", "o"), 21: ("automountServiceAccountToken", "bool", "po"),
        10: ("nodeName", "string", "o"), 11: ("hostNetwork", "bool", "o"),
        12: ("hostPID", "bool", "o"), 13: ("hostIPC", "bool", "o"),
        27: ("shareProcessNamespace", "bool", "po"),
        14: ("securityContext", "core/v1 PodSecurityContext", "po"),
        15: ("imagePullSecrets", "core/v1 LocalObjectReference", "ro"),
        16: ("hostname", "string", "o"), 17: ("subdomain", "string", "o"),
        18: ("affinity", "core/v1 Affinity", "po"), 19: ("schedulerName", "string", "o"),
        22: ("tolerations", "core/v1 Toleration", "ro"),
        23: ("hostAliases", "core/v1 HostAlias", "ro"), 24: ("priorityClassName", "string", "o"),
        25: ("priority", "int", "po"), 26: ("dnsConfig", "core/v1 PodDNSConfig", "po"),
        28: ("readinessGates", "core/v1 PodReadinessGate", "ro"),
        29: ("runtimeClassName", "string", "po"), 30: ("enableServiceLinks", "bool", "po"),
        31: ("preemptionPolicy", "string", "po"), 32: ("overhead", "quantity", "mo"),
        33: ("topologySpreadConstraints", "core/v1 TopologySpreadConstraint", "ro"),
        35: ("setHostnameAsFQDN", "bool", "po"), 36: ("os", "core/v1 PodOS", "po"),
        37: ("hostUsers", "bool", "po"),
        38: ("schedulingGates", "core/v1 PodSchedulingGate", "ro"),
        39: ("resourceClaims", "core/v1 PodResourceClaim", "ro"),
        40: ("resources", "core/v1 ResourceRequirements", "po")},
    "apps/v1 RollingUpdateDeployment": {
        1: ("maxUnavailable", "intstr", "po"), 2: ("maxSurge", "intstr", "po")},
    "authorization/v1 FieldSelectorAttributes": {
        1: ("rawSelector", "string", "o"),
        2: ("requirements", "meta/v1 FieldSelectorRequirement", "ro")},
    "authorization/v1 LabelSelectorAttributes": {
        1: ("rawSelector", "string", "o"),
        2: ("requirements", "meta/v1 LabelSelectorRequirement", "ro")},
    "core/v1 PortStatus": {
        1: ("port", "int", ""), 2: ("protocol", "string", ""), 3: ("error", "string", "po")},
    "core/v1 Container": {
        1: ("name", "string", ""), 2: ("image", "string", "o"), 3: ("command", "string", "ro"),
        4: ("args", "string", "ro"), 5: ("workingDir", "string", "o"),
        6: ("ports", "core/v1 ContainerPort", "ro"),
        19: ("envFrom", "core/v1 EnvFromSource", "ro"), 7: ("env", "core/v1 EnvVar", "ro"),
        8: ("resources", "core/v1 ResourceRequirements", "o"),
        23: ("resizePolicy", "core/v1 ContainerResizePolicy", "ro"),
        24: ("restartPolicy", "string", "po"), 9: ("volumeMounts", "core/v1 VolumeMount", "ro"),
        21: ("volumeDevices", "core/v1 VolumeDevice", "ro"),
        10: ("livenessProbe", "core/v1 Probe", "po"),
        11: ("readinessProbe", "core/v1 Probe", "po"), 22: ("startupProbe", "core/v1 Probe", "po"),
        12: ("lifecycle", "core/v1 Lifecycle", "po"),
        13: ("terminationMessagePath", "string", "o"),
        20: ("terminationMessagePolicy", "string", "o"), 14: ("imagePullPolicy", "string", "o"),
        15: ("securityContext", "core/v1 SecurityContext", "po"), 16: ("stdin", "bool", "o"),
        17: ("stdinOnce", "bool", "o"), 18: ("tty", "bool", "o")},
    "core/v1 ResourceRequirements": {
        1: ("limits", "quantity", "mo"), 2: ("requests", "quantity", "mo"),
        3: ("claims", "core/v1 ResourceClaim", "ro")},
    "meta/v1 FieldSelectorRequirement": {
        1: ("key", "string", ""), 2: ("operator", "string", ""), 3: ("values", "string", "ro")},
    "core/v1 ContainerPort": {
        1: ("name", "string", "o"), 2: ("hostPort", "int", "o"), 3: ("containerPort", "int", ""),
        4: ("protocol", "string", "o"), 5: ("hostIP", "string", "o")},
    "core/v1 ResourceClaim": {
        1: ("name", "string", ""), 2: ("request", "string", "o")},
}

__all__ = ["FAMILIES", "Field", "KINDS", "MESSAGES", "NOT_DECODED"]
