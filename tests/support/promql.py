"""The PromQL pyxlb ships: the Grafana dashboard's queries, the promql blocks of
docs/metrics.md and the alert rules' expressions. tests/unit/test_metrics_names.py checks
their labels against the metrics; tests/lab/test_prometheus.py evaluates them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator, List, Tuple

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "pyxlb-dashboard.json"
METRICS_DOC = ROOT / "docs" / "metrics.md"
RULES = ROOT / "deploy" / "prometheus" / "pyxlb-rules.yml"


def dashboard_queries() -> Iterator[Tuple[str, str]]:
    """(panel title, expr) of every query of the dashboard, rows' panels included."""
    def panels(items):
        for p in items:
            yield p
            yield from panels(p.get("panels", ()))

    for p in panels(json.loads(DASHBOARD.read_text())["panels"]):
        for t in p.get("targets", ()):
            yield p["title"], t["expr"]


def docs_queries() -> List[str]:
    """Every line of docs/metrics.md's promql blocks, its comment cut off."""
    text = METRICS_DOC.read_text()
    lines = [line.split("#", 1)[0].strip()
             for block in re.findall(r"```promql\n(.*?)```", text, flags=re.S)
             for line in block.splitlines()]
    return [line for line in lines if line]


def rule_queries() -> Iterator[Tuple[str, str]]:
    """(alert name, expr) of every alert rule."""
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            yield rule["alert"], rule["expr"]
