"""A stand-in for the agent in the restart test: the process that owns an LB node's datapath.

It reads a desired state (YAML) from stdin, enters the LB node's network namespace (only
that: /sys/fs/bpf stays visible), adopts the datapath pinned there, applies the state,
prints one JSON line {"ready": true, "plan_empty": ..., "changes": [...]}, then holds the
datapath until it is killed (or, at the latest, after --linger seconds).

    python tests/lab/owner.py --netns t123-lb1 --pin-dir /sys/fs/bpf/t123-lb1 < state.yaml
"""

import argparse
import json
import sys
import time

from pyxlb import config, netns
from pyxlb.datapath import Datapath


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--netns", required=True)
    parser.add_argument("--pin-dir", required=True)
    parser.add_argument("--linger", type=float, default=60.0)
    args = parser.parse_args(argv)
    desired = config.load_text(sys.stdin.read(), source="stdin")
    with netns.enter(args.netns):
        dp = Datapath.open(args.pin_dir)
        plan = dp.apply(desired).plan
        dp.refresh_nexthops()
        print(json.dumps({"ready": True, "plan_empty": plan.empty,
                          "changes": plan.describe()}), flush=True)
        time.sleep(args.linger)
        dp.close()


if __name__ == "__main__":
    main()
