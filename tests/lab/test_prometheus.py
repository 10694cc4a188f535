"""Prometheus scrapes the Kubernetes lab: every query of the Grafana dashboard and of
docs/metrics.md, evaluated by a real Prometheus (Debian's /usr/bin/prometheus) against real
agents after real traffic, returns data; and the alert rules of
deploy/prometheus/pyxlb-rules.yml load and fire as they should.

The lab is tests/support/k8slab.py's (three nodes, each running `pyxlb agent` against the
API stand-in), with one Local Service whose pods are spread 2/1/0 and whose
loadBalancerSourceRanges admit the client. Prometheus runs as its own process in the
router's namespace, scrapes the three agents' /metrics on the nodes' segment addresses every
second, loads the alert rules and answers on the router's address; the test queries its HTTP
API from a socket made in that namespace. A metric renamed or removed, or a label the
dashboard filters on that the agent does not write, leaves a panel without data: the test
names the panel and the query.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Dict, List

import pytest
import yaml

from pyxlb.k8s import objects as o
from pyxlb.k8s.run import WATCH_RESTART_REASONS
from pyxlb.lab import CLIENT_NET, ROUTER, VIP4, node_addr

from tests.support.k8slab import HEALTH_CHECK_PORT, KNODES, KubeLab
from tests.support.promql import (DASHBOARD, METRICS_DOC, RULES, dashboard_queries,
                                  docs_queries)


PROMETHEUS, PROMTOOL = "/usr/bin/prometheus", "/usr/bin/promtool"
PROM_PORT = 9090                # on the router's segment address, inside the lab
METRICS_PORT = 9742             # the agents' (the DaemonSet's port)
SCRAPE = 1                      # seconds between scrapes and between rule evaluations
# Grafana's $__interval for a short range, and its $__rate_interval:
# max($__interval + scrape interval, 4 x scrape interval)
INTERVAL = SCRAPE
RATE_INTERVAL = max(INTERVAL + SCRAPE, 4 * SCRAPE)

SHOP = "shop"
CONNECTIONS = 30                # per round of traffic
SERVICE_VIP = f"{VIP4}:80/tcp"
# the kinds each agent watches (Services, EndpointSlices, Nodes; IPPools and BGPPeers for
# announcing, IPPools again in the allocation controller)
WATCHED = {"Service", "EndpointSlice", "Node", "IPPool", "BGPPeer"}


def _wait(check, timeout: float, what: str, logs=lambda: ""):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            got = check()
            if got:
                return got
        except Exception as exc:      # not there yet: keep the last reason for the message
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}"
                         f"{f' (last: {last!r})' if last else ''}{logs()}")


# -- Prometheus, as its own process in the router's namespace -----------------------------

class Prometheus:
    """Debian's Prometheus in `lab`'s router namespace, scraping `targets` every second,
    with a data directory of its own; `stop` ends it and removes the directory."""

    def __init__(self, lab: KubeLab, targets: List[str], rule_files: List[Path]):
        self.lab = lab
        self.host = str(node_addr(ROUTER, 4))
        self.base = f"http://{self.host}:{PROM_PORT}"
        self.dir = tempfile.mkdtemp(prefix=f"pyxlb-{lab.prefix}-prometheus-")
        self.config = os.path.join(self.dir, "prometheus.yml")
        self.log = os.path.join(self.dir, "prometheus.log")
        with open(self.config, "w") as f:
            yaml.safe_dump({
                "global": {"scrape_interval": f"{SCRAPE}s", "scrape_timeout": f"{SCRAPE}s",
                           "evaluation_interval": f"{SCRAPE}s"},
                "rule_files": [str(p) for p in rule_files],
                "scrape_configs": [{"job_name": "pyxlb",
                                    "static_configs": [{"targets": targets}]}],
            }, f)
        self.proc = None
        # nothing in the lab goes through a proxy
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self.timings: Dict[str, float] = {}

    def start(self) -> "Prometheus":
        out = open(self.log, "ab")
        try:
            self.proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={self.config}",
                 f"--storage.tsdb.path={os.path.join(self.dir, 'data')}",
                 f"--web.listen-address={self.host}:{PROM_PORT}", "--log.level=warn"],
                preexec_fn=self.lab.preexec_in(ROUTER), stdin=subprocess.DEVNULL,
                stdout=out, stderr=out, close_fds=True, start_new_session=True)
        finally:
            out.close()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def logs(self) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return f"\n--- prometheus ---\n{f.read()[-3000:]}"
        except OSError:
            return ""

    def get(self, path: str, params=()) -> dict:
        """GET an API path (from a socket made in the router's namespace); its JSON."""
        url = f"{self.base}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with self.lab.in_router():
            try:
                with self._opener.open(url, timeout=5) as reply:
                    return json.load(reply)
            except urllib.error.HTTPError as exc:     # a bad query: the API says why
                body = exc.read().decode(errors="replace")
                raise AssertionError(f"{path} answered {exc.code}: {body[:300]}") from None

    def query(self, expr: str) -> List[dict]:
        """The result of an instant query (/api/v1/query): a list of series."""
        reply = self.get("/api/v1/query", [("query", expr)])
        assert reply["status"] == "success", reply
        assert reply["data"]["resultType"] == "vector", reply["data"]["resultType"]
        return reply["data"]["result"]

    def ready(self) -> bool:
        with self.lab.in_router():
            with self._opener.open(f"{self.base}/-/ready", timeout=2) as reply:
                return reply.status == 200

    def targets_scraped(self) -> bool:
        """Every target scraped at least once (up or not)."""
        active = self.get("/api/v1/targets")["data"]["activeTargets"]
        return len(active) == len(KNODES) and all(t["health"] != "unknown" for t in active)

    def targets_up(self) -> bool:
        active = self.get("/api/v1/targets")["data"]["activeTargets"]
        return len(active) == len(KNODES) and all(t["health"] == "up" for t in active)


def scalar(series: List[dict]) -> float:
    (one,) = series
    return float(one["value"][1])


# -- the lab ------------------------------------------------------------------------------

def agent_logs(lab) -> str:
    return "".join(f"\n--- agent {n} ---\n{lab.log_of(n)[-2000:]}" for n in KNODES)


def make_service(lab, api) -> None:
    """shop/web: Local, pods 2/1/0 on n1/n2/n3, asking for VIP4, open to the client's
    network only; waits until every node's balancer holds it."""
    api.create(o.namespace(SHOP))
    api.create(o.service("web", SHOP, policy="Local", health_port=HEALTH_CHECK_PORT,
                         load_balancer_ip=str(VIP4), source_ranges=[CLIENT_NET.v4]))
    api.create(o.spread("web", {"n1": 2, "n2": 1}, namespace=SHOP, name="web-ipv4"))
    _wait(lambda: o.ingress(api.get("Service", "web", SHOP)) == [str(VIP4)], 20,
          "the Service's status to carry the VIP", lambda: agent_logs(lab))

    def programmed(node):
        with lab.datapath(node) as dp:
            v = dp.layout(refresh=True).state.vip(SERVICE_VIP)
        return v is not None and {str(b.address) for b in v.backends
                                  if b.state == "active"} == {str(node_addr("n1", 4)),
                                                              str(node_addr("n2", 4))}

    for node in KNODES:
        _wait(lambda node=node: programmed(node), 20, f"{node}'s balancer to hold the VIP",
              lambda: agent_logs(lab))


@pytest.fixture(scope="module")
def prom_lab():
    """The lab with its agents and the Service, and Prometheus scraping the agents (ready
    and every target up). Prometheus is stopped and its directory removed, the agents and
    the stand-in stopped and the lab removed, whatever happens."""
    assert os.geteuid() == 0, "the lab tests need root (namespaces, XDP, bpffs)"
    lab = KubeLab(f"p{os.getpid() % 100000}")
    api = prom = None
    try:
        lab.up()
        api = lab.start_api(bookmark_interval=1.0)
        api.create(o.ip_pool("lab", [f"{VIP4}/32"], auto_assign=False))
        for node in KNODES:
            lab.start_agent(node, api, "--metrics-port", str(METRICS_PORT),
                            "--lease-duration", "2")
        prom = Prometheus(lab, [f"{node_addr(n, 4)}:{METRICS_PORT}" for n in KNODES],
                          [RULES])
        started = time.monotonic()
        prom.start()
        _wait(prom.ready, 30, "Prometheus to be ready", prom.logs)
        prom.timings["ready"] = time.monotonic() - started
        _wait(prom.targets_scraped, 30, "every target to be scraped once", prom.logs)
        prom.timings["first scrape"] = time.monotonic() - started
        _wait(prom.targets_up, 30, "every agent's target to be up",
              lambda: prom.logs() + agent_logs(lab))
        prom.timings["targets up"] = time.monotonic() - started
        print("\nPrometheus, seconds after its start: " + ", ".join(
            f"{what} {t:.2f}" for what, t in prom.timings.items()))
        # healthy means an agent holds the allocation Lease, as Prometheus has scraped it
        # (before that, PyxlbNoLeader's expression is true)
        _wait(lambda: [v for v in prom.query("sum(pyxlb_agent_leader)")
                       if float(v["value"][1]) == 1], 30, "a leader to be scraped",
              lambda: prom.logs() + agent_logs(lab))
        make_service(lab, api)
        yield lab, prom
    finally:
        if prom is not None:
            prom.stop()
        if api is not None:
            api.stop()
        lab.down()


def traffic(lab, prom) -> None:
    """CONNECTIONS connections from the client to the Service, then wait until Prometheus
    has scraped counters that include them, and one scrape more (every rate has two
    samples after the traffic)."""
    before = prom.query(f'sum(pyxlb_vip_packets_total{{vip="{SERVICE_VIP}"}})')
    floor = scalar(before) if before else 0.0
    seen = [lab.who(4)[0] for _ in range(CONNECTIONS)]
    assert set(seen) <= {"n1", "n2"} and len(seen) == CONNECTIONS, seen
    _wait(lambda: scalar(prom.query(f'sum(pyxlb_vip_packets_total{{vip="{SERVICE_VIP}"}})'))
          >= floor + 3 * CONNECTIONS, 15, "Prometheus to scrape the connections' packets",
          prom.logs)
    time.sleep(SCRAPE + 0.5)


# -- what is evaluated --------------------------------------------------------------------

def grafana_escape(value: str) -> str:
    """A multi-value variable's value as Grafana writes it into a PromQL regex: special
    characters behind a backslash, itself escaped for the PromQL string."""
    return re.sub(r"[$^*{}\[\]'+?.()|\\]", lambda m: "\\\\" + m.group(0), value)


def substitute(expr: str, instance: str) -> str:
    """`expr` as Grafana sends it: its interval variables for a short range with 1 s
    scrapes, `$instance` as given (already in its regex form)."""
    out = (expr.replace("$__rate_interval", f"{RATE_INTERVAL}s")
           .replace("$__interval", f"{INTERVAL}s").replace("$instance", instance))
    left = re.findall(r"\$\{?\w+", out)
    assert not left, f"{expr!r}: no value for {left}: teach this test the new variable"
    return out


def docs_metric_names() -> List[str]:
    """Every metric docs/metrics.md names (`pyxlb_...` in backquotes), but those of its
    section on `pyxlb serve`'s health checks: no agent runs them (tests/lab/test_health.py
    scrapes a serve)."""
    text = re.sub(r"\n## Health checks \(`pyxlb serve`\).*?(?=\n## )", "\n",
                  METRICS_DOC.read_text(), flags=re.S)
    return sorted(set(re.findall(r"`(pyxlb_[a-z_]*[a-z])`", text)))


# -- the tests ----------------------------------------------------------------------------

def test_every_dashboard_query_returns_data(prom_lab):
    """Each of the dashboard's queries, with Node = All and with every node picked by name,
    returns at least one series after traffic; the Node variable's own query lists the
    three agents."""
    lab, prom = prom_lab
    traffic(lab, prom)
    variable = json.loads(DASHBOARD.read_text())["templating"]["list"]
    (node_var,) = [v for v in variable if v["name"] == "instance"]
    metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)",
                                 node_var["query"]["query"]).groups()
    instances = prom.get(f"/api/v1/label/{label}/values", [("match[]", metric)])["data"]
    assert sorted(instances) == sorted(f"{node_addr(n, 4)}:{METRICS_PORT}" for n in KNODES)
    picked = "(" + "|".join(grafana_escape(i) for i in instances) + ")"

    queries = list(dashboard_queries())
    assert len(queries) >= 32, f"the dashboard has {len(queries)} queries"
    empty = []
    for title, expr in queries:
        for choice, value in (("All", node_var["allValue"]), ("every node", picked)):
            query = substitute(expr, value)
            if not prom.query(query):
                empty.append(f"panel {title!r}, Node={choice}: {query}")
    assert not empty, ("these dashboard queries returned no series (a metric or label "
                       "renamed or removed?):\n  " + "\n  ".join(empty))


def test_healthy_lab_panels_read_zero(prom_lab):
    """The panels of errors, restarts and failing nodes read 0 in a healthy lab, because
    their series exist at 0 before the first error, restart or failed probe."""
    lab, prom = prom_lab
    traffic(lab, prom)
    queries = {title: substitute(expr, ".*") for title, expr in dashboard_queries()}
    errors = prom.query(queries["Reconcile errors/s"])
    assert [float(s["value"][1]) for s in errors] == [0.0], errors
    failing = prom.query(queries["Nodes failing health checks"])
    assert {s["metric"]["node"]: float(s["value"][1]) for s in failing} == \
        {"n1": 0.0, "n2": 0.0}, "only n1 and n2 have the Service's pods: they are probed"
    restarts = prom.query(queries["Watch restarts"])
    assert {(s["metric"]["resource"], s["metric"]["reason"]) for s in restarts} == \
        {(kind, reason) for kind in WATCHED for reason in WATCH_RESTART_REASONS}
    per_agent = prom.query('count by (instance) (pyxlb_agent_watch_restarts_total)')
    assert {s["metric"]["instance"]: scalar([s]) for s in per_agent} == {
        f"{node_addr(n, 4)}:{METRICS_PORT}": len(WATCHED) * len(WATCH_RESTART_REASONS)
        for n in KNODES}
    assert scalar(prom.query(queries["Services served"])) == 1
    assert scalar(prom.query(queries["Leaders"])) == 1


def test_docs_queries_and_metrics_return_data(prom_lab):
    """Every query in docs/metrics.md's promql blocks, and every metric it names (a
    histogram by its _count), returns at least one series."""
    lab, prom = prom_lab
    traffic(lab, prom)
    queries = docs_queries()
    names = docs_metric_names()
    assert len(queries) >= 6 and len(names) >= 15, (queries, names)
    empty = [f"docs/metrics.md query: {q}" for q in queries if not prom.query(q)]
    empty += [f"docs/metrics.md metric: {n}" for n in names
              if not prom.query(n) and not prom.query(f"{n}_count")]
    assert not empty, "no series for:\n  " + "\n  ".join(empty)
    # the traffic went through the Service's VIP: its counters moved, and n1 balanced it
    sent = prom.query(f'sum by (instance) (pyxlb_vip_new_flows_total{{vip="{SERVICE_VIP}"}})')
    by_node = {s["metric"]["instance"]: float(s["value"][1]) for s in sent}
    assert by_node[f"{node_addr('n1', 4)}:{METRICS_PORT}"] >= CONNECTIONS, by_node


def test_rules_load_and_evaluate(prom_lab):
    """The alert rules are loaded by the lab's Prometheus, each evaluated without error,
    and in the healthy lab none is active (pending: its expression true now; or firing)."""
    lab, prom = prom_lab

    def evaluated():
        groups = prom.get("/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r["health"] != "unknown" for r in rules) else None

    rules = _wait(evaluated, 15, "every rule to be evaluated once", prom.logs)
    assert {r["name"] for r in rules} == set(shipped_alerts())
    bad = [(r["name"], r["health"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, bad
    # an alert evaluated before the fixture saw the lab healthy (the first seconds, no
    # leader scraped yet) is pending until the next evaluation finds its expression false
    deadline = time.monotonic() + 3 * SCRAPE + 1
    while True:
        active = prom.get("/api/v1/alerts")["data"]["alerts"]
        if not active or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert active == [], [(a["labels"], a["state"]) for a in active]


# -- the rules on their own (promtool) ----------------------------------------------------

def shipped_alerts() -> List[str]:
    return [r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"]
            for r in g["rules"]]


def test_promtool_checks_the_rules():
    done = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(shipped_alerts())} rules found" in done.stdout, done.stdout


N1 = f'instance="n1:{METRICS_PORT}", job="pyxlb"'
N2 = f'instance="n2:{METRICS_PORT}", job="pyxlb"'
# A healthy two-node cluster, as the agents export it (the labelled series at 0): no rule
# may fire on it.
HEALTHY = {
    f"up{{{N1}}}": "1x30", f"up{{{N2}}}": "1x30",
    f"pyxlb_agent_api_up{{{N1}}}": "1x30", f"pyxlb_agent_api_up{{{N2}}}": "1x30",
    f"pyxlb_agent_leader{{{N1}}}": "1x30", f"pyxlb_agent_leader{{{N2}}}": "0x30",
    f'pyxlb_agent_reconciles_total{{{N1}, result="ok"}}': "0+2x30",
    f'pyxlb_agent_reconciles_total{{{N1}, result="error"}}': "0x30",
    f'pyxlb_xdp_actions_total{{{N1}, action="drop", reason="no_backend"}}': "0x30",
    f'pyxlb_xdp_actions_total{{{N1}, action="tx", reason="forwarded"}}': "0+500x30",
    f'pyxlb_agent_node_health{{{N1}, node="n1"}}': "1x30",
    f'pyxlb_agent_node_health{{{N1}, node="n2"}}': "1x30",
}
# alert: the series that change (over HEALTHY), and the labels and summary it fires with
# at 20m
BROKEN = {
    "PyxlbAgentDown": (
        {f"up{{{N2}}}": "1 1 0x28"}, {"instance": f"n2:{METRICS_PORT}", "job": "pyxlb"},
        f"pyxlb on n2:{METRICS_PORT} does not answer scrapes"),
    "PyxlbApiUnreachable": (
        {f"pyxlb_agent_api_up{{{N1}}}": "1 0x29"},
        {"instance": f"n1:{METRICS_PORT}", "job": "pyxlb"},
        f"pyxlb on n1:{METRICS_PORT} has lost its watches of the API server"),
    "PyxlbReconcileErrors": (
        {f'pyxlb_agent_reconciles_total{{{N1}, result="error"}}': "0+1x30"},
        {"instance": f"n1:{METRICS_PORT}"},
        f"pyxlb on n1:{METRICS_PORT} keeps failing to reconcile"),
    "PyxlbNoLeader": ({f"pyxlb_agent_leader{{{N1}}}": "1 0x29"}, {},
                      "No pyxlb agent holds the IP allocation Lease"),
    "PyxlbSeveralLeaders": ({f"pyxlb_agent_leader{{{N2}}}": "0 1x29"}, {},
                            "2 pyxlb agents say they hold the IP allocation Lease"),
    "PyxlbNoBackend": (
        {f'pyxlb_xdp_actions_total{{{N1}, action="drop", reason="no_backend"}}': "0+60x30"},
        {"instance": f"n1:{METRICS_PORT}"},
        f"pyxlb on n1:{METRICS_PORT} drops VIP traffic: no backend"),
    "PyxlbNodeUnhealthy": (
        {f'pyxlb_agent_node_health{{{N1}, node="n2"}}': "1 0x29"},
        {"instance": f"n1:{METRICS_PORT}", "job": "pyxlb", "node": "n2"},
        f"n1:{METRICS_PORT} sees node n2 failing its health check"),
}


def promtool_tests() -> dict:
    """promtool's unit tests of the rules: one healthy cluster where nothing fires, and one
    case per alert where only its own fault is made, and only it fires."""
    rules = {r["alert"]: r for g in yaml.safe_load(RULES.read_text())["groups"]
             for r in g["rules"]}

    def series(values):
        return [{"series": s, "values": v} for s, v in values.items()]

    def checks(firing=None):
        out = []
        for alert, rule in rules.items():
            exp = []
            if alert == firing:
                _, labels, summary = BROKEN[alert]
                exp = [{"exp_labels": {**rule["labels"], **labels},
                        "exp_annotations": {"summary": summary,
                                            "description": rule["annotations"]["description"]}}]
            out.append({"eval_time": "20m", "alertname": alert, "exp_alerts": exp})
        return out

    cases = [{"interval": "1m", "input_series": series(HEALTHY), "alert_rule_test": checks()}]
    cases += [{"interval": "1m", "input_series": series({**HEALTHY, **changed}),
               "alert_rule_test": checks(alert)}
              for alert, (changed, _, _) in BROKEN.items()]
    return {"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": cases}


def test_each_rule_fires_on_its_fault_only(tmp_path):
    assert set(BROKEN) == set(shipped_alerts()), "every shipped alert has a case here"
    spec = tmp_path / "rules-test.yml"
    spec.write_text(yaml.safe_dump(promtool_tests()))
    done = subprocess.run([PROMTOOL, "test", "rules", str(spec)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
