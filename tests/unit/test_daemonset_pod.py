"""The lab's reading of deploy/daemonset.yaml and deploy/configmap.yaml
(tests/support/daemonset.py): what a containerised agent gets is what the manifests say,
and a pod field the lab cannot reproduce stops it rather than being dropped."""

import copy

import pytest
import yaml

from tests.support.daemonset import (CONFIGMAP, DAEMONSET, SA_MOUNT, AgentPod,
                                     UnsupportedManifest, quantity)


def run_args(pod, tmp_path):
    return pod.podman_run(name="x-agent-n1", image="pyxlb:dev", netns="x-n1", node="n1",
                          sa_dir=str(tmp_path / "sa"), api_env={"KUBERNETES_SERVICE_HOST": "h"},
                          lab_env={"PYXLB_PIN_DIR": "/sys/fs/bpf/x-n1"},
                          scratch=str(tmp_path), log_path=str(tmp_path / "log"))


def test_the_container_gets_the_daemonsets_settings(tmp_path):
    pod = AgentPod.read()
    args = run_args(pod, tmp_path)
    caps = pod.container["securityContext"]["capabilities"]
    assert [a for a in args if a.startswith("--cap-")] == (
        [f"--cap-drop={c}" for c in caps["drop"]] + [f"--cap-add={c}" for c in caps["add"]])
    assert "--privileged" not in args
    assert {"--read-only", "--read-only-tmpfs=false", "--user=0"} <= set(args)
    assert "--network=ns:/run/netns/x-n1" in args
    mounts = [a for a in args if a.startswith("--mount=")]
    assert ("--mount=type=bind,source=/sys/fs/bpf,destination=/sys/fs/bpf,"
            "bind-propagation=rslave") in mounts
    assert f"--mount=type=tmpfs,destination=/tmp,tmpfs-size={16 << 20}" in mounts
    assert any(m.startswith("--mount=type=tmpfs,destination=/run/pyxlb,") for m in mounts)
    assert f"--mount=type=bind,source={tmp_path / 'sa'},destination={SA_MOUNT},ro" in mounts
    assert f"--memory={1 << 30}" in args
    # env: the ConfigMap, the downward API, then the lab's one change
    env = dict(a[len("--env="):].split("=", 1) for a in args if a.startswith("--env="))
    config = yaml.safe_load(CONFIGMAP.read_text())["data"]
    assert {k: env[k] for k in config if k != "PYXLB_PIN_DIR"} == {
        k: str(v) for k, v in config.items() if k != "PYXLB_PIN_DIR"}
    assert env["NODE_NAME"] == "n1" and env["POD_NAMESPACE"] == "pyxlb-system"
    assert env["PYXLB_PIN_DIR"] == "/sys/fs/bpf/x-n1" and env["KUBERNETES_SERVICE_HOST"] == "h"
    assert args[-2:] == ["pyxlb:dev", "agent"]


def _edited(tmp_path, edit):
    ds = yaml.safe_load(DAEMONSET.read_text())
    edit(ds["spec"]["template"]["spec"])
    path = tmp_path / "daemonset.yaml"
    path.write_text(yaml.safe_dump(ds))
    return AgentPod.read(daemonset=path)


def test_a_capability_taken_from_the_manifest_is_taken_from_the_container(tmp_path):
    def drop(spec):
        spec["containers"][0]["securityContext"]["capabilities"]["add"].remove("NET_ADMIN")
    assert "--cap-add=NET_ADMIN" not in run_args(_edited(tmp_path, drop), tmp_path)


@pytest.mark.parametrize("edit, what", [
    (lambda s: s.update(hostPID=True), "hostPID"),
    (lambda s: s["containers"][0].update(lifecycle={}), "lifecycle"),
    (lambda s: s["containers"][0]["securityContext"].update(procMount="Unmasked"), "procMount"),
    (lambda s: s["containers"][0]["env"].append(
        {"name": "K", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}), "secretKeyRef"),
    (lambda s: s["volumes"].append({"name": "c", "configMap": {"name": "x"}})
     or s["containers"][0]["volumeMounts"].append({"name": "c", "mountPath": "/c"}), "configMap"),
    (lambda s: s.update(hostNetwork=False), "hostNetwork"),
])
def test_a_field_the_lab_cannot_reproduce_stops_it(tmp_path, edit, what):
    with pytest.raises(UnsupportedManifest, match=what):
        run_args(_edited(tmp_path, edit), tmp_path)


def test_quantities():
    assert quantity("16Mi") == 16 << 20 and quantity("1Gi") == 1 << 30
    assert quantity("500M") == 500_000_000 and quantity("64") == 64
    with pytest.raises(UnsupportedManifest):
        quantity("1.5Gi")


def test_reading_leaves_the_manifest_as_it_was():
    pod = AgentPod.read()
    before = copy.deepcopy(pod.pod)
    pod.security_options()
    assert pod.pod == before
