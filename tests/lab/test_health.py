"""Health checks in the lab: `pyxlb serve` runs as a real process on lb1 and checks the
backends (be1-be3, each with the decapsulator and a server of its own) of two VIPs:

- VIP4:8080, http checks through the tunnel (to the VIP, encapsulated to the backend);
- VIP4:8081, tcp checks sent directly to the backends' own addresses.

The backends' servers are this module's (Servers): each can stop listening while the
connections it accepted go on, which is what a stopped service looks like to a balancer
that must not cut open connections. One lab for the module; every test starts from every
server listening, every decapsulator attached and every verdict up, and runs its own
serve.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Dict, List, Optional

import pytest
import yaml

from pyxlb import netns
from pyxlb import node as node_mod
from pyxlb.health.service import read_status, status_path
from pyxlb.lab import BACKENDS, VIP4, VIP6, node_addr
from pyxlb.lab.topology import ENCAP_SOURCE

from .conftest import lab_up

PREFIX = f"hc{os.getpid() % 100000}"
TUNNEL_PORT, DIRECT_PORT = 8080, 8081
INTERVAL, TIMEOUT, RISE, FALL = 0.2, 0.15, 2, 2
SLACK = 1.5         # seconds on top of interval × fall (+ timeout): a loaded 2-core machine
VIPS = {TUNNEL_PORT: f"{VIP4}:{TUNNEL_PORT}/tcp", DIRECT_PORT: f"{VIP4}:{DIRECT_PORT}/tcp"}


# -- the backends' servers ----------------------------------------------------------------

class Servers:
    """A server on TUNNEL_PORT and DIRECT_PORT in every backend's namespace, on one thread.
    `GET ...` is answered "HTTP/1.0 200 OK" and the backend's name; anything else is echoed
    back, prefixed with the backend's name ("be2:" + data), for as long as the client
    sends. stop(node, port) closes the listening socket only: new connections are refused,
    accepted ones go on."""

    def __init__(self, lab):
        self.lab = lab
        self.sel = selectors.DefaultSelector()
        self.listeners: Dict[tuple, socket.socket] = {}
        self.r, self.w = os.pipe()
        self.sel.register(self.r, selectors.EVENT_READ, ("wake", None))
        self.todo: List = []
        self.done = threading.Event()
        self.closing = False
        for node in BACKENDS:
            for port in (TUNNEL_PORT, DIRECT_PORT):
                self._listen(node, port)
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _listen(self, node: str, port: int) -> None:
        with netns.enter(self.lab.ns(node)):
            s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", port))
        s.listen(256)
        s.setblocking(False)
        self.listeners[(node, port)] = s
        self.sel.register(s, selectors.EVENT_READ, ("listen", node))

    def _call(self, fn) -> None:
        """Run fn on the server thread (the selector is its own), and wait for it."""
        done = threading.Event()
        self.todo.append((fn, done))
        os.write(self.w, b"x")
        assert done.wait(5), "the test servers' thread did not answer"

    def stop(self, node: str, port: int) -> None:
        def close():
            s = self.listeners.pop((node, port))
            self.sel.unregister(s)
            s.close()
        self._call(close)

    def start(self, node: str, port: int) -> None:
        if (node, port) not in self.listeners:
            self._call(lambda: self._listen(node, port))

    def start_all(self) -> None:
        for node in BACKENDS:
            for port in (TUNNEL_PORT, DIRECT_PORT):
                self.start(node, port)

    def _loop(self) -> None:
        deadline = time.monotonic() + 600       # bounded, whatever happens
        while not self.closing and time.monotonic() < deadline:
            for key, _ in self.sel.select(0.5):
                kind, node = key.data
                if kind == "wake":
                    os.read(self.r, 4096)
                    while self.todo:
                        fn, done = self.todo.pop(0)
                        fn()
                        done.set()
                elif kind == "listen":
                    try:
                        conn, _ = key.fileobj.accept()
                    except OSError:
                        continue
                    conn.setblocking(False)
                    self.sel.register(conn, selectors.EVENT_READ, ("conn", node))
                else:
                    self._serve(key.fileobj, node)
        for key in list(self.sel.get_map().values()):
            if key.data[0] != "wake":
                key.fileobj.close()

    def _serve(self, conn: socket.socket, node: str) -> None:
        try:
            data = conn.recv(65536)
        except OSError:
            data = b""
        if data.startswith(b"GET "):
            with contextlib.suppress(OSError):
                conn.send(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" +
                          node.encode() + b"\n")
            data = b""
        elif data:
            with contextlib.suppress(OSError):
                conn.sendall(node.encode() + b":" + data)
                return
        self.sel.unregister(conn)
        conn.close()

    def close(self) -> None:
        self.closing = True
        os.write(self.w, b"x")
        self.thread.join(5)


# -- the lab, serve, and what they say ----------------------------------------------------

@pytest.fixture(scope="module")
def hlab():
    with lab_up(PREFIX) as lab:
        lab.route_via("lb1")
        servers = Servers(lab)
        try:
            yield lab, servers
        finally:
            servers.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(status_path(lab.pin_dir("lb1")))


def restore_decap(lab, node: str) -> None:
    sources = [p for src in ENCAP_SOURCE.values() for p in (src.v4, src.v6)]
    with netns.enter(lab.ns(node)):
        node_mod.bring_up_decap(lab.pin_dir(node), ("eth0",), (VIP4, VIP6), sources).dp.close()


def remove_decap(lab, node: str) -> None:
    subprocess.run([sys.executable, "-m", "pyxlb", "--netns", lab.ns(node), "--pin-dir",
                    lab.pin_dir(node), "decap", "detach", "eth0"], check=True,
                   capture_output=True, timeout=30)


def file_for(lab, tmp_path) -> str:
    """Both VIPs, their checks fast (INTERVAL, FALL, RISE), as a state file."""
    backends = [str(node_addr(b, 4)) for b in BACKENDS]
    common = {"interval": INTERVAL, "timeout": TIMEOUT, "rise": RISE, "fall": FALL}
    doc = {"vips": [
        {"vip": VIPS[TUNNEL_PORT], "backends": backends,
         "health": {"type": "http", "path": "/health", "via": "tunnel", **common}},
        {"vip": VIPS[DIRECT_PORT], "backends": backends,
         "health": {"type": "tcp", "via": "direct", **common}}]}
    path = tmp_path / "lb.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


@pytest.fixture
def fresh(hlab, tmp_path):
    """The module's lab as every test expects it: every server listening, every
    decapsulator attached, the file applied on lb1 with every verdict up. Yields
    (lab, servers, file)."""
    lab, servers = hlab
    servers.start_all()
    for node in BACKENDS:
        if not os.path.isdir(lab.pin_dir(node)):
            restore_decap(lab, node)
    path = file_for(lab, tmp_path)
    subprocess.run([sys.executable, "-m", "pyxlb", "--netns", lab.ns("lb1"), "--pin-dir",
                    lab.pin_dir("lb1"), "apply", "-f", path], check=True,
                   capture_output=True, timeout=30)
    with lab.datapath("lb1") as dp:
        with dp.editing():
            state = dp.current_state()
            dp.apply(state.with_verdicts({(v.key, b.address): False for v in state
                                          for b in v.backends}), verdicts="set")
        dp.refresh_nexthops()
    yield lab, servers, path


class Serve:
    """`pyxlb serve -f FILE` on lb1, as a real process; its log kept in `lines`."""

    def __init__(self, lab, path: str, timeout: float = 20.0):
        self.lab = lab
        self.lines: List[str] = []
        self.metrics_url: Optional[str] = None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pyxlb", "--netns", lab.ns("lb1"), "--pin-dir",
             lab.pin_dir("lb1"), "serve", "-f", path, "--metrics-port", "0",
             "--metrics-address", "127.0.0.1"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if not self.ready.wait(timeout):
            self.kill()
            raise AssertionError(f"serve did not start within {timeout} s: "
                                 f"{self.text()[-2000:]}")

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            m = re.search(r"metrics on (http://\S+)", line)
            if m:
                self.metrics_url = m.group(1)
            if "pyxlb serve: " in line and " checks (" in line:
                self.ready.set()

    def text(self) -> str:
        return "\n".join(self.lines)

    def transitions(self, port: int, node: str) -> List[str]:
        """The log's verdict changes of (VIP port, backend node): "up -> down", ..."""
        pat = re.compile(rf"VIP {re.escape(VIPS[port])} backend "
                         rf"{re.escape(str(node_addr(node, 4)))}: (\w+ -> \w+)")
        return [m.group(1) for m in map(pat.search, self.lines) if m]

    def metrics(self) -> str:
        with netns.enter(self.lab.ns("lb1")):
            with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
                return r.read().decode()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(15)
        self.reader.join(5)
        assert rc == 0, f"serve exited with {rc}: {self.text()[-2000:]}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


def verdicts(lab) -> Dict[tuple, bool]:
    """{(VIP port, backend node): down} as lb1's datapath holds them."""
    names = {node_addr(b, 4): b for b in BACKENDS}
    with lab.datapath("lb1") as dp:
        state = dp.layout(refresh=True).state
    return {(v.key.port, names[b.address]): b.down for v in state for b in v.backends
            if b.address in names}


def wait_for(what: str, cond, timeout: float, step: float = 0.02) -> float:
    """Poll cond() until true; seconds it took; AssertionError after `timeout`."""
    started = time.monotonic()
    while not cond():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout:.1f} s: {what}")
        time.sleep(step)
    return time.monotonic() - started


def checked_everything(lab, at_least: int = 1) -> bool:
    """serve's status file shows every target checked at least `at_least` times."""
    doc = read_status(lab.pin_dir("lb1"))
    return bool(doc) and len(doc["checks"]) == 2 * len(BACKENDS) and \
        all(c["checks"] >= at_least for c in doc["checks"])


class Echo:
    """A connection from the client to VIP4:port, echoing: who() is the backend on the
    other end, and every talk() must come back from it."""

    def __init__(self, lab, port: int):
        self.sock = lab.client_socket(4)
        self.sock.settimeout(3)
        self.sock.connect((str(VIP4), port))
        self.backend = self.talk(b"hello")

    def talk(self, data: bytes) -> str:
        self.sock.sendall(data)
        got = b""
        while not got.endswith(data):
            chunk = self.sock.recv(65536)
            assert chunk, "the backend closed an open connection"
            got += chunk
        return got[:-len(data) - 1].decode()

    def close(self) -> None:
        self.sock.close()


def backend_of_new_connection(lab, port: int) -> str:
    e = Echo(lab, port)
    try:
        return e.backend
    finally:
        e.close()


# -- the tests ----------------------------------------------------------------------------

def test_a_stopped_server_gets_no_new_connections_and_comes_back(fresh):
    lab, servers, path = fresh
    port = TUNNEL_PORT
    with Serve(lab, path) as serve, contextlib.ExitStack() as held:
        wait_for("every backend checked twice", lambda: checked_everything(lab, 2), 10)
        open_on_be2 = []
        for _ in range(40):         # connections until a few land on be2 (Maglev decides)
            e = Echo(lab, port)
            held.callback(e.close)
            if e.backend == "be2":
                open_on_be2.append(e)
            if len(open_on_be2) == 2:
                break
        assert open_on_be2, "no connection of 40 reached be2"

        servers.stop("be2", port)
        took = wait_for("be2 down", lambda: verdicts(lab)[(port, "be2")],
                        INTERVAL * FALL + TIMEOUT + SLACK)
        news = [backend_of_new_connection(lab, port) for _ in range(20)]
        assert "be2" not in news, f"new connections reached the down be2: {news}"
        for e in open_on_be2:       # open connections go on, both ways
            assert e.talk(b"still there?") == "be2"
        assert not verdicts(lab)[(DIRECT_PORT, "be2")], "the other VIP's check still passes"

        servers.start("be2", port)
        back = wait_for("be2 up", lambda: not verdicts(lab)[(port, "be2")],
                        INTERVAL * RISE + TIMEOUT + SLACK)
        news = [backend_of_new_connection(lab, port) for _ in range(30)]
        assert "be2" in news, f"be2 is back but got none of 30 new connections: {news}"
        for e in open_on_be2:
            assert e.talk(b"and now?") == "be2"
        wait_for("the log", lambda: len(serve.transitions(port, "be2")) == 2, 5)
        assert serve.transitions(port, "be2") == ["up -> down", "down -> up"], serve.text()
        down = re.search(r"up -> down \((.*)\)", next(
            line for line in serve.lines if "up -> down" in line)).group(1)
        assert f"{FALL} failures: connection refused" in down
        m = serve.metrics()
        labels = f'backend="{node_addr("be2", 4)}",to="down",vip="{VIPS[port]}"'
        assert f"pyxlb_backend_health_transitions_total{{{labels}}} 1.0" in m, m[-3000:]
        serve.stop()
    print(f"be2 down {took:.2f} s after its server stopped, up {back:.2f} s after it "
          f"restarted (interval {INTERVAL}, fall {FALL}, rise {RISE})")


def test_a_removed_decapsulator_fails_the_tunnel_check_not_the_direct_one(fresh):
    lab, _servers, path = fresh
    with Serve(lab, path) as serve:
        wait_for("every backend checked twice", lambda: checked_everything(lab, 2), 10)
        remove_decap(lab, "be3")
        try:
            wait_for("be3 down through the tunnel",
                     lambda: verdicts(lab)[(TUNNEL_PORT, "be3")],
                     INTERVAL * FALL + TIMEOUT + SLACK)
            time.sleep(INTERVAL * (FALL + 1))
            v = verdicts(lab)
            assert not v[(DIRECT_PORT, "be3")], "the direct check of be3 failed too"
            assert not any(v[(p, b)] for p in (TUNNEL_PORT, DIRECT_PORT) for b in ("be1", "be2"))
            doc = read_status(lab.pin_dir("lb1"))
            row = next(c for c in doc["checks"] if c["vip"] == VIPS[TUNNEL_PORT]
                       and c["backend"] == str(node_addr("be3", 4)))
            assert row["verdict"] == "down" and "timed out" in row["last_error"], row
        finally:
            restore_decap(lab, "be3")
        wait_for("be3 back up through the tunnel",
                 lambda: not verdicts(lab)[(TUNNEL_PORT, "be3")],
                 INTERVAL * RISE + TIMEOUT + SLACK)
        serve.stop()
    assert serve.transitions(TUNNEL_PORT, "be3") == ["up -> down", "down -> up"]
    assert serve.transitions(DIRECT_PORT, "be3") == []


def test_a_restarted_serve_keeps_the_last_verdicts(fresh):
    lab, servers, path = fresh
    servers.stop("be1", DIRECT_PORT)
    with Serve(lab, path) as first:
        wait_for("be1 down", lambda: verdicts(lab)[(DIRECT_PORT, "be1")],
                 INTERVAL * FALL + TIMEOUT + SLACK)
        first.stop()
    assert verdicts(lab)[(DIRECT_PORT, "be1")], "the verdict is kept in the datapath"

    seen: List[bool] = []
    stop = threading.Event()

    def watch():        # the datapath's verdict, every 20 ms, across the restart
        while not stop.is_set():
            seen.append(verdicts(lab)[(DIRECT_PORT, "be1")])
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with Serve(lab, path) as second:
            scraped = second.metrics()
            wait_for("serve checked be1 again", lambda: checked_everything(lab, FALL + 1), 10)
            stop.set()
            watcher.join(5)
            be1 = f'pyxlb_backend_health{{backend="{node_addr("be1", 4)}",' \
                  f'vip="{VIPS[DIRECT_PORT]}"}}'
            assert f"{be1} 0.0" in scraped, "the first scrape after the restart says up"
            assert f"{be1} 0.0" in second.metrics()
            servers.start("be1", DIRECT_PORT)
            wait_for("be1 up", lambda: not verdicts(lab)[(DIRECT_PORT, "be1")],
                     INTERVAL * RISE + TIMEOUT + SLACK)
            second.stop()
    finally:
        stop.set()
        watcher.join(5)
    assert len(seen) > 20 and all(seen), f"be1 was up for a moment across the restart: {seen}"
    assert second.transitions(DIRECT_PORT, "be1") == ["down -> up"]


def test_tunnel_checks_leave_no_connection_on_the_backends(fresh):
    """A check's connection ends with a RST, which goes through the tunnel like the rest
    of it: the backend's end of every check is gone once serve stops. (A RST sent plain,
    to the backend's own address, finds nothing there: the backend's end stays open, and
    a later check from the same local port meets it and times out.) Serve is stopped as a
    service is, by SIGTERM: the sockets of a SIGKILLed process are closed by the kernel in
    an order of its own, and a check in flight may lose its tunnel before its RST."""
    lab, servers, path = fresh
    with Serve(lab, path) as serve:
        wait_for("every backend checked", lambda: checked_everything(lab, FALL + 2), 10)
        serve.stop()
    time.sleep(0.2)
    for node in BACKENDS:
        left = subprocess.run(["ss", "-Htn", "-N", lab.ns(node), "state", "connected",
                               f"( sport = :{TUNNEL_PORT} )"], capture_output=True,
                              text=True, check=True, timeout=10).stdout
        assert left.strip() == "", f"{node} kept check connections open:\n{left}"


def test_health_json_shows_the_table(fresh):
    lab, servers, path = fresh
    cmd = [sys.executable, "-m", "pyxlb", "--netns", lab.ns("lb1"), "--pin-dir",
           lab.pin_dir("lb1"), "health"]
    servers.stop("be3", DIRECT_PORT)
    with Serve(lab, path) as serve:
        wait_for("be3 down", lambda: verdicts(lab)[(DIRECT_PORT, "be3")],
                 INTERVAL * FALL + TIMEOUT + SLACK)
        wait_for("the status file", lambda: checked_everything(lab, FALL + 1), 10)
        doc = json.loads(subprocess.run(cmd + ["--json"], capture_output=True, text=True,
                                        check=True, timeout=30).stdout)
        assert doc["serve"]["pid"] == serve.proc.pid
        rows = {(c["vip"], c["backend"]): c for c in doc["checks"]}
        assert set(rows) == {(VIPS[p], str(node_addr(b, 4)))
                             for p in (TUNNEL_PORT, DIRECT_PORT) for b in BACKENDS}
        be3 = rows[(VIPS[DIRECT_PORT], str(node_addr("be3", 4)))]
        assert (be3["type"], be3["via"], be3["port"], be3["verdict"]) == \
            ("tcp", "direct", DIRECT_PORT, "down")
        assert be3["last_result"] == "fail" and be3["failures"] >= FALL
        assert be3["last_error"] == "connection refused"
        be1 = rows[(VIPS[TUNNEL_PORT], str(node_addr("be1", 4)))]
        assert (be1["type"], be1["via"], be1["path"], be1["verdict"], be1["last_result"]) \
            == ("http", "tunnel", "/health", "up", "ok")
        table = subprocess.run(cmd, capture_output=True, text=True, check=True,
                               timeout=30).stdout
        assert re.search(rf"{re.escape(VIPS[DIRECT_PORT])}\s+{node_addr('be3', 4)}\s+"
                         rf"tcp :{DIRECT_PORT} direct\s+down\s.*connection refused", table), table
        watched = subprocess.run(cmd + ["--json", "--watch", "0.2", "--count", "2"],
                                 capture_output=True, text=True, check=True, timeout=30)
        assert len(watched.stdout.splitlines()) == 2
        serve.stop()
    assert not os.path.exists(status_path(lab.pin_dir("lb1"))), "serve left its status file"
    after = json.loads(subprocess.run(cmd + ["--json"], capture_output=True, text=True,
                                      check=True, timeout=30).stdout)
    assert after["serve"] is None
    assert {(c["backend"], c["verdict"]) for c in after["checks"]
            if c["vip"] == VIPS[DIRECT_PORT]} == \
        {(str(node_addr(b, 4)), "down" if b == "be3" else "up") for b in BACKENDS}


def test_serve_follows_sighup_and_the_cli(fresh, tmp_path):
    """A VIP added by hand while serve runs is checked within seconds; SIGHUP applies the
    edited file (which drops it again: the file is the state) and a file with an error
    changes nothing and stops nothing."""
    lab, _servers, path = fresh
    pyxlb = [sys.executable, "-m", "pyxlb", "--netns", lab.ns("lb1"), "--pin-dir",
             lab.pin_dir("lb1")]
    extra = f"{VIP4}:8082/tcp"      # no server listens there: its backend goes down
    with Serve(lab, path) as serve:
        subprocess.run(pyxlb + ["vip", "add", extra, "--health", "tcp", "--health-via",
                                "direct", "--health-interval", str(INTERVAL),
                                "--health-timeout", str(TIMEOUT), "--health-fall",
                                str(FALL)], check=True, capture_output=True, timeout=30)
        subprocess.run(pyxlb + ["backend", "add", extra, str(node_addr("be1", 4))],
                       check=True, capture_output=True, timeout=30)

        def extra_row():
            doc = read_status(lab.pin_dir("lb1"))
            return next((c for c in doc["checks"] if c["vip"] == extra), None) if doc \
                else None
        wait_for("serve to check the VIP added by hand",
                 lambda: (extra_row() or {}).get("verdict") == "down",
                 2 + INTERVAL * FALL + TIMEOUT + SLACK)
        assert extra_row()["last_error"] == "connection refused"

        doc = yaml.safe_load(open(path))
        doc["vips"][1]["health"]["fall"] = FALL + 3
        with open(path, "w") as f:
            yaml.safe_dump(doc, f)
        serve.proc.send_signal(signal.SIGHUP)

        def reloaded():
            d = read_status(lab.pin_dir("lb1"))
            return d is not None and extra_row() is None and \
                {c["fall"] for c in d["checks"] if c["vip"] == VIPS[DIRECT_PORT]} == {FALL + 3}
        wait_for("SIGHUP to apply the edited file", reloaded, 2 + SLACK)

        with open(path, "w") as f:
            f.write("vips: [{vip: nonsense}]\n")
        serve.proc.send_signal(signal.SIGHUP)
        wait_for("the error in the log", lambda: any("SIGHUP" in line and "keeping the "
                                                     "state in force" in line
                                                     for line in serve.lines), 5)
        assert serve.proc.poll() is None
        assert len(verdicts(lab)) == 2 * len(BACKENDS), "a bad file changed the state"
        serve.stop()
