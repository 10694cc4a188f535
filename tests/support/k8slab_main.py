"""`make k8s-lab`: the Kubernetes lab (tests/support/k8slab.py), installed as docs/deploy.md
says and left up until Ctrl-C, for kubectl (docs/lab.md).

The API stand-in listens on the lab's router, inside the lab, over HTTPS with RBAC; the lab
writes an admin kubeconfig for it and prints how to use it. `--image pyxlb:dev` runs the
nodes' agents from the image, in containers set up as deploy/daemonset.yaml says.
Everything the lab made goes on exit, also after an error.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from pyxlb.errors import PyxlbError
from pyxlb.k8s import objects as o
from pyxlb.lab import VIP4

from tests.support.k8slab import AUTO_VIP4, KNODES, KubeLab
from tests.support.standin import ApiStandIn

STATE = Path("/run/pyxlb-lab")
API_PORT = 6443             # the API server's usual port, on the lab's router


def install(lab: KubeLab) -> ApiStandIn:
    """The stand-in on the router, pyxlb installed in it as docs/deploy.md says (namespace,
    RBAC, CRDs, ConfigMap), the nodes, a pool of the lab's routed addresses, and an agent
    on every node."""
    api = lab.start_api("crds/ippools.yaml", "crds/bgppeers.yaml", "configmap.yaml",
                        port=API_PORT)
    # the addresses the lab's router sends to n1 (loadBalancerIP picks VIP4)
    api.create(o.ip_pool("lab", [f"{AUTO_VIP4}/32", f"{VIP4}/32"]))
    for node in KNODES:
        if lab.image is not None:
            lab.start_agent(node, api)
        else:
            lab.start_agent(node, api, "--metrics-port", "9742", "--probe-port", "9743")
    return api


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="make k8s-lab",
        description="Build the Kubernetes lab and keep it up until Ctrl-C, for kubectl.")
    parser.add_argument("--image", help="run the agents from this image (e.g. pyxlb:dev)")
    parser.add_argument("--prefix", default="xlbk",
                        help="name prefix of the lab's namespaces (default: %(default)s)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("k8s-lab: needs root (namespaces, XDP, bpffs)", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    lab = KubeLab(args.prefix, image=args.image)
    api = None
    try:
        lab.down()          # what a lab of this prefix left behind
        lab.up(log=lambda m: print(f"  {m}"))
        api = install(lab)
        config = STATE / args.prefix / "kubeconfig"
        config.parent.mkdir(parents=True, exist_ok=True)
        api.write_kubeconfig(config)
        where = f"containers from {args.image}" if args.image else "processes"
        print(f"""
Kubernetes lab {args.prefix!r} is up: the API on https://{lab.api_host}:{api.port} (inside the
lab, on its router), an agent on each of {', '.join(KNODES)} ({where}).

  export KUBECONFIG={config}
  alias kubectl='ip netns exec {lab.ns('router')} kubectl'
  kubectl get nodes
  kubectl apply -f docs/lab/k8s-web.yaml      # a Service on {VIP4}, pods on n1 and n2
  kubectl get svc -A
  ip netns exec {lab.ns('client')} curl -s http://{VIP4}/

Ctrl-C takes the lab down.""", flush=True)
        while not stop.wait(1.0):
            pass
        return 0
    except PyxlbError as exc:
        print(f"k8s-lab: {exc}", file=sys.stderr)
        return 1
    finally:
        if api is not None:
            api.stop()
        lab.down()
        print(f"lab {args.prefix!r} is down")


if __name__ == "__main__":
    sys.exit(main())
