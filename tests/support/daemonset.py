"""The agent's pod, as deploy/daemonset.yaml and deploy/configmap.yaml describe it, turned
into a `podman run` in one lab node's network namespace.

The manifests are read when a container starts, so a change to them is what the lab runs:
a capability dropped from the DaemonSet, a volume taken away, an environment variable
renamed, each reaches the containerised agent. Every field of the pod that decides what the
agent may do is translated; a field this module does not know fails loudly
(`UnsupportedManifest`) rather than being left out, so a new setting cannot pass the lab
untested. Fields that only matter to the scheduler or the kubelet's bookkeeping
(tolerations, priority, update strategy, probes, requests, ports of a hostNetwork pod,
DNS policy) are listed in IGNORED and have no effect on the container.

What a node of the lab cannot be, and the lab therefore changes (`LAB_ENV`, nothing else):
all three nodes share this machine's bpffs, so each node's agent pins under its own
directory (PYXLB_PIN_DIR), as three real nodes would each have their own /sys/fs/bpf.

How kubelet's pieces map onto podman:
- hostNetwork: the node's network namespace (`--network ns:/run/netns/NODE`);
- capabilities, privileged, readOnlyRootFilesystem (`--read-only --read-only-tmpfs=false`:
  podman would otherwise mount a tmpfs on /run, /tmp and /var/tmp that a pod does not
  have), runAsUser, the seccomp/AppArmor/SELinux options;
- hostPath volumes as bind mounts with their mount propagation, emptyDir as a tmpfs
  (medium Memory, sizeLimit) or a fresh directory, configMap-sourced env (envFrom), the
  downward API fields the agent reads (spec.nodeName, metadata.namespace);
- the service account's token, CA and namespace, mounted read-only where kubelet puts
  them, with KUBERNETES_SERVICE_HOST/PORT in the environment;
- resources.limits.memory as the container's memory limit (the kernel charges BPF maps
  to it);
- terminationGracePeriodSeconds as the time `podman stop` waits before SIGKILL.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import yaml

ROOT = Path(__file__).resolve().parents[2]
DAEMONSET = ROOT / "deploy" / "daemonset.yaml"
CONFIGMAP = ROOT / "deploy" / "configmap.yaml"
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"

# Pod and container fields that change nothing a container on one node can do.
IGNORED_POD = {"serviceAccountName", "automountServiceAccountToken", "hostNetwork",
               "dnsPolicy", "enableServiceLinks", "priorityClassName", "tolerations",
               "terminationGracePeriodSeconds", "securityContext", "containers", "volumes"}
IGNORED_CONTAINER = {"name", "image", "imagePullPolicy", "ports", "startupProbe",
                     "livenessProbe", "readinessProbe", "args", "command", "env", "envFrom",
                     "resources", "securityContext", "volumeMounts"}
PROPAGATION = {None: "rprivate", "None": "rprivate", "HostToContainer": "rslave",
               "Bidirectional": "rshared"}
QUANTITY = re.compile(r"^(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
UNITS = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
         "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


class UnsupportedManifest(Exception):
    """The DaemonSet uses a field the lab cannot reproduce faithfully."""


def quantity(text: str) -> int:
    """Bytes of a Kubernetes memory quantity such as 16Mi or 1Gi."""
    m = QUANTITY.match(str(text))
    if not m:
        raise UnsupportedManifest(f"memory quantity {text!r}")
    return int(m.group(1)) * UNITS[m.group(2)]


@dataclasses.dataclass
class AgentPod:
    """The DaemonSet's pod template and the ConfigMap's data, as read from deploy/."""

    namespace: str
    pod: dict
    container: dict
    config: Dict[str, str]
    grace: int

    @classmethod
    def read(cls, daemonset: Path = DAEMONSET, configmap: Path = CONFIGMAP) -> "AgentPod":
        ds = yaml.safe_load(daemonset.read_text())
        cm = yaml.safe_load(configmap.read_text())
        pod = ds["spec"]["template"]["spec"]
        containers = pod["containers"]
        if len(containers) != 1 or pod.get("initContainers"):
            raise UnsupportedManifest("the lab runs a pod of exactly one container")
        unknown = set(pod) - IGNORED_POD
        unknown |= {f"containers[0].{k}" for k in set(containers[0]) - IGNORED_CONTAINER}
        if unknown:
            raise UnsupportedManifest(f"pod fields the lab does not reproduce: {sorted(unknown)}")
        if not pod.get("hostNetwork"):
            raise UnsupportedManifest("the agent's pod must use hostNetwork")
        return cls(namespace=ds["metadata"]["namespace"], pod=pod, container=containers[0],
                   config={k: str(v) for k, v in (cm.get("data") or {}).items()},
                   grace=int(pod.get("terminationGracePeriodSeconds", 30)))

    @property
    def service_account(self) -> str:
        return self.pod.get("serviceAccountName", "default")

    # -- environment ----------------------------------------------------------------------

    def environment(self, node: str, lab_env: Mapping[str, str]) -> Dict[str, str]:
        """The container's environment as kubelet would build it, then `lab_env` on top."""
        env: Dict[str, str] = {}
        for source in self.container.get("envFrom", []):
            ref = source.get("configMapRef")
            if ref is None or ref.get("name") != "pyxlb-config":
                raise UnsupportedManifest(f"envFrom {source}: only the pyxlb-config ConfigMap")
            env.update(self.config)
        for item in self.container.get("env", []):
            env[item["name"]] = self._value(item, node)
        env.update(lab_env)
        return env

    def _value(self, item: dict, node: str) -> str:
        if "value" in item:
            return str(item["value"])
        field = item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        if field == "spec.nodeName":
            return node
        if field == "metadata.namespace":
            return self.namespace
        raise UnsupportedManifest(f"env {item['name']}: valueFrom {item.get('valueFrom')}")

    # -- security -------------------------------------------------------------------------

    def security_options(self) -> List[str]:
        sc = dict(self.container.get("securityContext", {}))
        pod_sc = dict(self.pod.get("securityContext", {}))
        opts: List[str] = []
        if sc.pop("privileged", False):
            opts.append("--privileged")
        caps = sc.pop("capabilities", {})
        opts += [f"--cap-drop={c}" for c in caps.get("drop", [])]
        opts += [f"--cap-add={c}" for c in caps.get("add", [])]
        if sc.pop("readOnlyRootFilesystem", False):
            opts += ["--read-only", "--read-only-tmpfs=false"]
        user = sc.pop("runAsUser", pod_sc.pop("runAsUser", None))
        if user is not None:
            opts.append(f"--user={int(user)}")
        if sc.pop("allowPrivilegeEscalation", True) is False:
            opts.append("--security-opt=no-new-privileges")
        for where in (pod_sc, sc):
            opts += self._profiles(where)
        left = sorted(set(sc) | set(pod_sc))
        if left:
            raise UnsupportedManifest(f"securityContext fields the lab does not reproduce: {left}")
        return opts

    @staticmethod
    def _profiles(sc: dict) -> List[str]:
        opts = []
        seccomp = sc.pop("seccompProfile", None)
        if seccomp is not None:
            kind = seccomp.get("type")
            if kind == "Unconfined":
                opts.append("--security-opt=seccomp=unconfined")
            elif kind != "RuntimeDefault":       # podman's default filter is the runtime's
                raise UnsupportedManifest(f"seccompProfile {seccomp}")
        apparmor = sc.pop("appArmorProfile", None)
        if apparmor is not None:
            if apparmor.get("type") == "Unconfined":
                opts.append("--security-opt=apparmor=unconfined")
            elif apparmor.get("type") != "RuntimeDefault":
                raise UnsupportedManifest(f"appArmorProfile {apparmor}")
        selinux = sc.pop("seLinuxOptions", None)
        if selinux is not None:
            for key, value in selinux.items():
                opts.append(f"--security-opt=label={key}:{value}")
        return opts

    # -- volumes --------------------------------------------------------------------------

    def mounts(self, scratch: str) -> List[str]:
        """Bind mounts and tmpfs mounts for the container's volumeMounts; emptyDirs on
        disk are made under `scratch`."""
        volumes = {v["name"]: v for v in self.pod.get("volumes", [])}
        opts = []
        for m in self.container.get("volumeMounts", []):
            vol = volumes.get(m["name"])
            if vol is None:
                raise UnsupportedManifest(f"volumeMount {m['name']}: no such volume")
            if m.get("subPath") or m.get("subPathExpr"):
                raise UnsupportedManifest(f"volumeMount {m['name']}: subPath")
            ro = ",ro" if m.get("readOnly") else ""
            if "hostPath" in vol:
                prop = PROPAGATION.get(m.get("mountPropagation"))
                if prop is None:
                    raise UnsupportedManifest(f"mountPropagation {m.get('mountPropagation')}")
                path = vol["hostPath"]["path"]
                if vol["hostPath"].get("type") == "Directory" and not os.path.isdir(path):
                    raise UnsupportedManifest(f"hostPath {path} is not a directory here")
                opts.append(f"--mount=type=bind,source={path},destination={m['mountPath']},"
                            f"bind-propagation={prop}{ro}")
            elif "emptyDir" in vol:
                opts.append(self._empty_dir(vol, m, scratch, ro))
            else:
                kind = next((k for k in vol if k != "name"), "?")
                raise UnsupportedManifest(f"volume {m['name']}: {kind} (the lab reproduces "
                                          f"hostPath and emptyDir only)")
        return opts

    @staticmethod
    def _empty_dir(vol: dict, m: dict, scratch: str, ro: str) -> str:
        spec = vol["emptyDir"] or {}
        if spec.get("medium") == "Memory":
            size = spec.get("sizeLimit")
            size_opt = f",tmpfs-size={quantity(size)}" if size else ""
            return f"--mount=type=tmpfs,destination={m['mountPath']}{size_opt}"
        path = os.path.join(scratch, f"emptydir-{vol['name']}")
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
        return f"--mount=type=bind,source={path},destination={m['mountPath']}{ro}"

    def limits(self) -> List[str]:
        mem = self.container.get("resources", {}).get("limits", {}).get("memory")
        return [f"--memory={quantity(mem)}"] if mem else []

    # -- the whole command ----------------------------------------------------------------

    def podman_run(self, *, name: str, image: str, netns: str, node: str,
                   sa_dir: Optional[str], api_env: Mapping[str, str],
                   lab_env: Mapping[str, str], scratch: str, log_path: str) -> List[str]:
        """`podman run` arguments for `node`'s agent (detached)."""
        cmd = ["podman", "run", "--detach", f"--name={name}", f"--network=ns:/run/netns/{netns}",
               f"--stop-timeout={self.grace}", "--log-driver=k8s-file",
               f"--log-opt=path={log_path}", "--pull=never"]
        cmd += self.security_options() + self.mounts(scratch) + self.limits()
        if self.pod.get("automountServiceAccountToken", True) and sa_dir is not None:
            cmd.append(f"--mount=type=bind,source={sa_dir},destination={SA_MOUNT},ro")
        env = dict(api_env)
        env.update(self.environment(node, lab_env))
        for key in sorted(env):
            cmd.append(f"--env={key}={env[key]}")
        entry = self.container.get("command")
        if entry:
            cmd.append(f"--entrypoint={entry[0]}")
            cmd.append(image)
            cmd += entry[1:]
        else:
            cmd.append(image)
        cmd += [str(a) for a in self.container.get("args", [])]
        return cmd


class PodmanError(Exception):
    """podman refused; the message is its own."""


def podman(args: List[str], *, check: bool = True,
           timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run podman with this host's containers.conf (scripts/containers-conf.sh: runc, and
    rlimits the host allows); a failure raises with podman's own message."""
    env = dict(os.environ)
    if "CONTAINERS_CONF" not in env:
        env["CONTAINERS_CONF"] = subprocess.run(
            [str(ROOT / "scripts" / "containers-conf.sh")], capture_output=True, text=True,
            check=True).stdout.strip()
    res = subprocess.run(["podman", *args], capture_output=True, text=True, env=env,
                         timeout=timeout)
    if check and res.returncode != 0:
        raise PodmanError(f"podman {args[0]}: {res.stderr.strip() or res.stdout.strip()}")
    return res


def container_state(name: str) -> str:
    """running, exited, ... or "" when there is no such container."""
    res = podman(["inspect", "--format", "{{.State.Status}}", name], check=False)
    return res.stdout.strip() if res.returncode == 0 else ""
