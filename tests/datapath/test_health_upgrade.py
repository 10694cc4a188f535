"""A datapath the previous release made (without health checks) is upgraded by this one:
xlb_health_specs comes new and empty, xlb_members migrates (its pad byte became the health
byte, zero: not checked), the state reads back whole, and checks can then be added.

The previous release is built once from git (tests/support/release.py, about a minute
cold; the suite's upgrade tests share the build)."""

import json
import subprocess
import sys

from click.testing import CliRunner

from pyxlb import _layouts as L
from pyxlb.cli.root import cli
from pyxlb.datapath import Datapath
from pyxlb.state import VipKey
from tests.support.release import build_release

MAKE = """
import sys
# the previous release's maps: its IPv6 flows in the LRU hash xlb_flows
from pyxlb.datapath import Datapath
from pyxlb.config import load_text
dp = Datapath.create(sys.argv[1], map_sizes={"xlb_flows": 4096, "xlb_flowsets4": 1 << 12})
dp.apply(load_text(sys.stdin.read()))
"""
STATE = """vips:
- vip: 192.0.2.10:80/tcp
  backends: [10.0.1.1, {address: 10.0.1.2, weight: 2}, {address: 10.0.1.3, state: draining}]
- {vip: "[2001:db8::10]:0/udp", backends: ["2001:db8::1"]}
"""


def pyxlb(*args, input=None):
    """This version's command, in-process."""
    result = CliRunner().invoke(cli, list(args), input=input, prog_name="pyxlb")
    assert result.exit_code == 0, (args, result.stdout, result.stderr, result.exception)
    return result.stdout


def test_the_previous_release_gains_empty_health_maps(bpffs_dir):
    release = build_release()
    pin = f"{bpffs_dir}/lb"
    subprocess.run([sys.executable, "-c", MAKE, pin], input=STATE, text=True, check=True,
                   env=release.env(), timeout=120)
    plan = json.loads(pyxlb("--pin-dir", pin, "upgrade", "--dry-run", "--json"))
    changes = {m["name"]: m["action"] for m in plan["maps"] if m["action"] != "keep"}
    assert changes["xlb_health_specs"] == "new" and changes["xlb_members"] == "migrate"
    assert changes["xlb_flowsets6"] == "new"        # filled from the LRU hash
    assert plan["from"].startswith("unrecorded")
    pyxlb("--pin-dir", pin, "upgrade")
    saved = pyxlb("--pin-dir", pin, "vip", "list", "--json")
    assert "health" not in saved
    with Datapath.open(pin) as dp:
        assert dp.tables.health_specs.read() == {}
        members = dp.tables.members.read()
        assert len(members) == 4 and {h for _, _, h in members.values()} == \
            {L.HEALTH_UNCHECKED}
        assert {str(b.address): b.state for b in dp.current_state().vip(
            VipKey.parse("192.0.2.10:80/tcp")).backends} == \
            {"10.0.1.1": "active", "10.0.1.2": "active", "10.0.1.3": "draining"}
    assert "nothing to change" in pyxlb("--pin-dir", pin, "apply", "-f", "-", input=saved)
    assert "1 health specs written" in pyxlb("--pin-dir", pin, "vip", "health",
                                             "192.0.2.10:80/tcp", "--health", "tcp")
    with Datapath.open(pin) as dp:
        assert len(dp.tables.health_specs.read()) == 1
        vid = dp.layout().vip_ids[VipKey.parse("192.0.2.10:80/tcp")]
        assert {h for (v, _), (_, _, h) in dp.tables.members.read().items() if v == vid} \
            == {L.HEALTH_UP}
        dp.destroy()
