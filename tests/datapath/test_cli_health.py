"""`pyxlb vip add / backend add --health...`, `vip health`, `backend health`, `vip list`
and `apply -f` with health checks, end to end through click's CliRunner on a real pinned
datapath (not attached: these commands only write maps, so no namespace is needed).

Every failure exits 2 with one line on stderr and changes nothing."""

from __future__ import annotations

import json
import os
import shutil
import uuid

import pytest
from click.testing import CliRunner

from pyxlb.cli.root import cli
from pyxlb.datapath import Datapath
from pyxlb.state import VipKey

SMALL = {"xlb_flowsets6": 1 << 10, "xlb_flowsets4": 1 << 12}
WEB = "192.0.2.10:80/tcp"
ANY = "192.0.2.11:0/tcp"


class Run:
    def __init__(self, pin_dir: str):
        self.pin_dir = pin_dir
        self.runner = CliRunner()

    def __call__(self, *args: str, ok: bool = True, input: str = None):
        result = self.runner.invoke(cli, ["--pin-dir", self.pin_dir, *args], input=input,
                                    prog_name="pyxlb")
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        if ok:
            assert result.exit_code == 0, (args, result.stdout, result.stderr)
        return result

    def fails(self, *args: str, match: str):
        result = self(*args, ok=False)
        assert result.exit_code == 2, (args, result.stdout, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("pyxlb: error: "), result.stderr
        assert match in lines[0], (match, lines[0])

    def state(self):
        return json.loads(self("vip", "list", "--json").stdout)

    def vip(self, key):
        return next(v for v in self.state()["vips"] if v["vip"] == key)


@pytest.fixture(scope="module")
def made():
    """One pinned datapath for the module, with the VIPs below made through the CLI; and
    the state they make, for `run` to put back before each test."""
    from pyxlb import bpffs
    bpffs.ensure_mounted()
    top = os.path.join(bpffs.BPFFS_ROOT, f"pyxlb-test-{os.getpid()}-{uuid.uuid4().hex[:12]}")
    os.mkdir(top)
    pin_dir = os.path.join(top, "lb")
    try:
        Datapath.create(pin_dir, map_sizes=SMALL).close()
        r = Run(pin_dir)
        r("vip", "add", WEB, "--health", "http", "--health-path", "/healthz",
          "--health-interval", "0.5", "--health-timeout", "0.2")
        r("backend", "add", WEB, "10.0.1.1")
        r("backend", "add", WEB, "10.0.1.2", "--health-port", "8080", "--health-via",
          "direct", "--health-on-fail", "gone")
        r("vip", "add", ANY)
        r("backend", "add", ANY, "10.0.1.1")
        with Datapath.open(pin_dir) as dp:
            yield pin_dir, dp.current_state()
            dp.destroy()
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def run(made):
    """A Run on the module's datapath, holding exactly the state `made` made (verdicts
    included: none is down)."""
    pin_dir, state = made
    with Datapath.open(pin_dir) as dp:
        dp.apply(state, verdicts="set")
        assert dp.current_state() == state
    return Run(pin_dir)


def test_add_list_and_change_checks(run):
    web = run.vip(WEB)
    assert web["health"] == {"type": "http", "path": "/healthz", "interval": 0.5,
                             "timeout": 0.2}
    assert web["backends"] == [
        {"address": "10.0.1.1", "weight": 1, "state": "active"},
        {"address": "10.0.1.2", "weight": 1, "state": "active",
         "health": {"port": 8080, "via": "direct", "on_fail": "gone"}}]
    assert "health" not in run.vip(ANY)
    rows = run("vip", "list").stdout.splitlines()
    assert rows[0].split()[-3:] == ["HEALTH", "SOURCE", "RANGES"]
    assert rows[1].split()[-2:] == ["http:80/healthz", "any"]
    assert rows[2].split()[-2:] == ["-", "any"]
    listing = run("backend", "list", WEB).stdout
    assert "http:8080/healthz (direct, gone) *" in listing

    out = run("vip", "health", WEB, "--health-fall", "5").stdout
    assert "    health: fall 3 -> 5" in out.splitlines()
    assert run.vip(WEB)["health"]["fall"] == 5
    # the override keeps what differs from the VIP's, and takes the rest from it
    assert run.vip(WEB)["backends"][1]["health"] == {"port": 8080, "via": "direct",
                                                    "on_fail": "gone"}
    assert "nothing to change" in run("vip", "health", WEB, "--health-fall", "5").stdout
    run("backend", "health", WEB, "10.0.1.2", "--inherit")
    assert "health" not in run.vip(WEB)["backends"][1]
    run("backend", "health", WEB, "10.0.1.1", "--health", "none")
    assert run.vip(WEB)["backends"][0]["health"] == {"type": "none"}
    assert "  -" in run("backend", "list", WEB).stdout.splitlines()[1] + "  -"
    run("vip", "health", WEB, "--remove")
    assert "health" not in run.vip(WEB)
    run("vip", "health", ANY, "--health", "tcp", "--health-port", "22")
    assert run.vip(ANY)["health"] == {"type": "tcp", "port": 22}


def test_verdicts_show_and_survive_edits_and_apply(run, tmp_path):
    with Datapath.open(run.pin_dir) as dp, dp.editing():
        state = dp.current_state()
        dp.apply(state.with_verdicts({(VipKey.parse(WEB), "10.0.1.1"): True}),
                 verdicts="set")
    assert "active (down)" in run("backend", "list", WEB).stdout
    assert "2/2 (1 down)" in run("vip", "list").stdout
    # the JSON has no verdicts, and applying it back changes nothing, verdicts included
    text = run("vip", "list", "--json").stdout
    assert "down" not in text
    assert "nothing to change" in run("apply", "-f", "-", input=text).stdout
    run("vip", "health", WEB, "--health-rise", "3")
    run("backend", "add", WEB, "10.0.1.3")
    assert "active (down)" in run("backend", "list", WEB).stdout
    with Datapath.open(run.pin_dir) as dp:
        backends = dp.current_state().vip(WEB).backends
        assert [b.down for b in backends] == [True, False, False]
        assert len(dp.current_state().vip(WEB).ring_members()) == 2


BAD = [
    (["vip", "add", "192.0.2.20:80/tcp", "--health-port", "80"], "without --health"),
    (["vip", "add", "192.0.2.20:80/tcp", "--health", "tcp", "--health-port", "81"],
     "to its port 80, not 81"),
    (["vip", "add", "192.0.2.20:0/tcp", "--health", "tcp"], "need a port"),
    (["vip", "add", "192.0.2.20:80/tcp", "--health", "http", "--health-expect", "2xx"],
     "expect must be"),
    (["vip", "add", "192.0.2.20:80/tcp", "--health", "http", "--health-timeout", "3"],
     "at most the interval"),
    (["vip", "add", "192.0.2.20:80/tcp", "--health", "http", "--health-interval", "0"],
     "outside 0.1-3600 seconds"),
    (["vip", "add", "192.0.2.20:80/tcp", "--health", "ping"], "'ping' is not one of"),
    (["vip", "add", "192.0.2.20:80/tcp", "--mode", "local", "--health", "tcp"],
     "local-mode VIP"),
    (["vip", "add", "192.0.2.20:80/tcp", "--health", "tcp", "--health-rise", "0"],
     "rise must be an integer 1-100"),
    (["backend", "add", ANY, "10.0.1.5", "--health-port", "80"], "without --health"),
    (["backend", "add", WEB, "2001:db8::5"], "IPv4 VIP to an IPv6 backend"),
    (["backend", "add", WEB, "10.0.1.5", "--health-path", "x"], "must start with '/'"),
    (["backend", "add", WEB, "10.0.1.5", "--health-port", "81"], "not 81"),
    (["backend", "health", WEB, "10.0.1.9", "--health-fall", "2"], "has no backend"),
    (["backend", "health", WEB, "10.0.1.1"], "give --inherit or the health options"),
    (["vip", "health", WEB], "give --remove or the health options"),
    (["vip", "health", "192.0.2.99:80/tcp", "--health", "tcp"], "no VIP"),
    (["vip", "health", ANY, "--health-fall", "2"], "without --health"),
    (["vip", "health", ANY, "--health", "tcp"], "need a port"),
]


@pytest.mark.parametrize("args, match", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_and_changes_nothing(run, args, match):
    before = run.state()
    run.fails(*args, match=match)
    assert run.state() == before


def test_apply_of_a_file_with_health_checks(run, tmp_path):
    path = tmp_path / "lb.yaml"
    path.write_text("vips:\n- vip: 192.0.2.30:443/tcp\n  health: {type: tcp}\n"
                    "  backends:\n  - 10.0.3.1\n  - {address: '2001:db8::3', "
                    "health: {via: direct}}\n")
    out = run("apply", "-f", str(path)).stdout
    assert "2 health specs written" in out
    assert run.state()["vips"] == [
        {"vip": "192.0.2.30:443/tcp", "mode": "ipip", "flow_table": True, "affinity": "none",
         "announce": False, "ring_size": 65537, "health": {"type": "tcp"},
         "backends": [{"address": "10.0.3.1", "weight": 1, "state": "active"},
                      {"address": "2001:db8::3", "weight": 1, "state": "active",
                       "health": {"via": "direct"}}]}]
    assert "nothing to change" in run("apply", "-f", str(path)).stdout
    before = run.state()
    path.write_text("vips:\n- vip: 192.0.2.30:443/tcp\n  health: {type: tcp}\n"
                    "  backends: ['2001:db8::3']\n")
    run.fails("apply", "-f", str(path), match="line 2, column 3: vips[0]: VIP "
              "192.0.2.30:443/tcp: backend 2001:db8::3: a health check through the tunnel")
    assert run.state() == before
