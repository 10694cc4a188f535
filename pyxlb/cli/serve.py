"""`pyxlb serve`: the long-running process of a standalone node (apply, health checks,
announcements, metrics). Registered on the `pyxlb` group in pyxlb/cli/root.py."""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Optional

import click

from pyxlb.cli.common import FAILURES, Fail, current_pin_dir, one_line, opened

log = logging.getLogger("pyxlb.serve")

LOG_LEVELS = ("debug", "info", "warning", "error")


def _open_tunnel(pin_dir: str):
    """(Tunnel, None), or (None, why not): checks through the tunnel then fail saying so."""
    try:
        from pyxlb.health.tunnel import Tunnel
    except ImportError as exc:
        return None, f"this pyxlb has no health-check tunnel ({exc})"
    try:
        return Tunnel.open(pin_dir), None
    except FAILURES as exc:
        return None, one_line(exc)


class _Serving:
    """What `serve` runs, and what its signals and ticks do."""

    def __init__(self, dp, path: Optional[str], section: Optional[dict]):
        self.dp = dp
        self.path = path
        self.section = section
        self.runner = None
        self.health = None
        self.reload_asked = False
        self.stopped = threading.Event()
        self.stopping = False
        self.observe = None         # after each check (the metrics' histogram)
        self._epoch = None

    # -- signals ---------------------------------------------------------------------------

    def ask_reload(self, *_args) -> None:
        self.reload_asked = True
        if self.runner is not None:
            self.runner.wake()
        else:
            self.stopped.set()      # wakes the loop; run() tells the two apart

    def stop(self, *_args) -> None:
        self.reload_asked = False
        if self.runner is not None:
            self.runner.stop()
        self.stopping = True
        self.stopped.set()

    # -- each second, and after SIGHUP --------------------------------------------------------

    def tick(self) -> None:
        if self.reload_asked:
            self.reload_asked = False
            self.reload()
        if self.runner is not None:
            # announce from what the maps hold: VIPs added by hand count, and an address
            # whose backends are all down is not announced (Runner.wanted uses in_ring)
            epoch = self.dp.tables.epoch.read()
            if epoch != self._epoch:
                self._epoch = epoch
                self.runner.state = self.dp.layout(refresh=True).state

    def reload(self) -> None:
        """SIGHUP: read the file again and apply it; a file with an error changes nothing
        (one line in the log), and the process goes on with what it had."""
        from pyxlb import config
        if self.path is None:
            log.info("SIGHUP: no file to read again (serve was started without -f)")
            self.health.refresh()
            return
        try:
            state, section = config.load_announce(self.path)
        except config.ConfigError as exc:
            log.error("SIGHUP: %s; keeping the state in force", one_line(exc))
            return
        if section != self.section:
            log.warning("SIGHUP: %s: the announce section changed; that takes a restart "
                        "(the VIPs are applied now)", self.path)
        try:
            result = self.dp.apply(state)
        except FAILURES as exc:
            log.error("SIGHUP: %s: %s; keeping the state in force", self.path, one_line(exc))
            return
        changes = result.plan.describe() if not result.plan.empty else ["nothing to change"]
        log.info("SIGHUP: applied %s: %s", self.path, "; ".join(changes))
        self._epoch = None
        self.health.refresh()


@click.command("serve")
@click.option("-f", "--file", "path", metavar="FILE",
              help="YAML state file (docs/config.md) to apply first, and again on SIGHUP; "
                   "its `announce` section, if any, is run as `pyxlb announce -f` runs it. "
                   "Without it, serve checks the VIPs the datapath holds.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), metavar="PORT",
              help="Serve Prometheus metrics (the datapath's and the health checks') on "
                   "this port (0: any free port, printed). Default: no metrics.")
@click.option("--metrics-address", default="::", show_default=True, metavar="ADDR",
              help="Address to serve the metrics on (:: is every IPv6 and IPv4 address).")
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default="info",
              show_default=True, help="Log verbosity (the log goes to stderr).")
def serve(path: Optional[str], metrics_port: Optional[int], metrics_address: str,
          log_level: str) -> None:
    """Run a standalone node: apply FILE, health-check the backends, announce the VIPs.

    The long-running process of a node without Kubernetes; it runs until SIGTERM or
    Ctrl-C. With -f, FILE is applied first (as `pyxlb apply -f` does: health verdicts
    already in the datapath are kept) and again on SIGHUP; its `announce` section, if
    any, is run as `pyxlb announce -f` runs it. Without -f, serve checks whatever the
    datapath holds (VIPs made with `vip add` / `backend add`).

    Every backend whose VIP (or itself) has a `health` spec is checked. A backend that
    fails `fall` checks in a row goes down (out of the ring: its open connections go on,
    or are forgotten with on_fail: gone), and comes back after `rise` passes; each change
    is one line in the log. VIPs and backends changed by other commands while serve runs
    are picked up within a second or two. A restarted serve starts from the verdicts in
    the datapath. `pyxlb health` shows the checks (docs/cli.md).

    \b
    Example:
      pyxlb attach eth0
      pyxlb serve -f lb.yaml --metrics-port 9100
      kill -HUP $(pidof -s pyxlb)       # after editing lb.yaml
      pyxlb health --watch
    """
    from pyxlb import config

    logging.basicConfig(level=getattr(logging, log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    state = section = None
    if path is not None:
        try:
            state, section = config.load_announce(path)
        except config.ConfigError as exc:
            raise Fail(one_line(exc)) from None
    pin_dir = os.path.abspath(current_pin_dir())
    with opened() as dp:
        s = _Serving(dp, path, section)
        # the metrics port first: one that is taken fails before anything is applied
        metrics = None
        if metrics_port is not None:
            metrics = _start_metrics(pin_dir, s, metrics_address, metrics_port)
        try:
            _start(s, dp, state, section, pin_dir)
            try:
                _run(s)
            finally:
                s.health.stop()
        finally:
            if metrics is not None:
                from pyxlb.metrics import stop_server
                stop_server(*metrics[:2])
                metrics[2].close()


def _start(s: _Serving, dp, state, section, pin_dir: str) -> None:
    """Apply the file (or hand it to the announcer, which applies it), open the tunnel,
    and make the health service (not started yet)."""
    from pyxlb.health.service import HealthService
    if section is not None:
        from pyxlb.announce.runner import Runner
        try:
            s.runner = Runner(dp, state, section)
        except FAILURES as exc:
            raise Fail(one_line(exc)) from None
    elif state is not None:
        try:
            result = dp.apply(state)
        except FAILURES as exc:
            raise Fail(one_line(exc)) from None
        for line in result.plan.describe() if not result.plan.empty else ():
            log.info("%s: %s", s.path, line)
    tunnel, why_not = _open_tunnel(pin_dir)
    if why_not:
        log.warning("checks through the tunnel will fail: %s", why_not)
    try:
        s.health = HealthService(pin_dir, tunnel=tunnel, tunnel_error=why_not or "",
                                 on_result=s.observe)
    except FAILURES as exc:
        if tunnel is not None:
            tunnel.close()
        raise Fail(one_line(exc)) from None


def _start_metrics(pin_dir: str, s: _Serving, host: str, port: int):
    """The exporter: (server, thread, its own Datapath). The checks' metrics read
    s.health, once there is one."""
    from pyxlb import metrics
    from pyxlb.datapath import Datapath
    dp = Datapath.open(pin_dir)
    try:
        registry = metrics.make_registry(dp)
        observe = metrics.add_health(
            registry, lambda: s.health.status() if s.health is not None else [])
        s.observe = lambda _target, _ok, seconds: observe(seconds)
        server, thread, url = metrics.start_server(registry, host, port)
    except BaseException as exc:
        dp.close()
        if isinstance(exc, FAILURES):
            raise Fail(one_line(exc)) from None
        raise
    click.echo(f"pyxlb serve: metrics on {url}", err=True)
    return server, thread, dp


def _run(s: _Serving) -> None:
    checks = s.health.status()
    tunnelled = sum(1 for c in checks if c["via"] == "tunnel")
    what = f"{len(checks)} checks ({tunnelled} through the tunnel)"
    previous = {signal.SIGHUP: signal.signal(signal.SIGHUP, s.ask_reload)}
    s.health.start()
    try:
        if s.runner is not None:
            r = s.runner
            click.echo(f"pyxlb serve: {what}; announcing ({r.mode}) as {r.node} on "
                       f"{r.interface}", err=True)
            r.run(on_tick=s.tick)       # handles SIGTERM and SIGINT itself
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, s.stop)
        click.echo(f"pyxlb serve: {what}; no announcements", err=True)
        while True:
            s.stopped.wait(1.0)
            if s.stopping:
                break
            s.stopped.clear()
            s.tick()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
