"""The Grafana dashboard and the Prometheus alert rules name only metrics the services
export: every `vigil_*` name in a PromQL expression is in the /metrics of one of the five
processes, read from them running. A renamed metric would leave a panel empty and an alert
silent, and nothing else would say so."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import ROOT, Databases, free_port
from tests.e2e.system import PROCESSES, System, eventually, running_system

pytestmark = pytest.mark.e2e

DASHBOARDS = sorted((ROOT / "deploy" / "grafana").glob("*.json"))
RULES = ROOT / "deploy" / "prometheus" / "rules.yaml"
METRIC = re.compile(r"\bvigil_[a-z0-9_]+\b")
# A histogram's or summary's family stands for these series; a counter's for `_total`.
SUFFIXES = {"histogram": ("_bucket", "_count", "_sum"), "summary": ("_count", "_sum")}


def exported_names(exposition: str) -> set[str]:
    """Every series name a Prometheus exposition can give, samples or not yet (a labelled
    metric shows only its TYPE line until it is first used)."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            names.update(name + suffix for suffix in SUFFIXES.get(kind, ()))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def dashboard_expressions(path: Path) -> list[str]:
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "query", "definition") and isinstance(value, str):
                    found.append(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(path.read_text()))
    return found


def rule_expressions(path: Path) -> list[str]:
    groups = yaml.safe_load(path.read_text())["groups"]
    return [str(rule["expr"]) for group in groups for rule in group["rules"]]


@pytest.fixture(scope="module")
def metrics_system(
    databases: Databases, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[System, dict[str, int]]]:
    with running_system(databases, tmp_path_factory.mktemp("dashboards"), processes=()) as system:
        ports = {name: free_port() for name in PROCESSES}
        for name, port in ports.items():
            system.start(name, metrics_port=port)
        yield system, ports


def test_every_dashboard_and_rule_metric_is_exported(
    metrics_system: tuple[System, dict[str, int]],
) -> None:
    system, ports = metrics_system
    urls = [f"{system.command.url}/metrics", f"{system.query.url}/metrics"]
    urls += [f"http://127.0.0.1:{port}/metrics" for port in ports.values()]

    def scrape(url: str) -> str | None:
        try:
            reply = httpx.get(url, timeout=5)
        except httpx.TransportError:
            return None
        return reply.text if reply.status_code == 200 else None

    exported: set[str] = set()
    for url in urls:
        exported |= exported_names(eventually(lambda u=url: scrape(u), 60, url, system))

    assert DASHBOARDS, "no Grafana dashboard under deploy/grafana"
    wanted: dict[str, set[str]] = {}
    for path in [*DASHBOARDS, RULES]:
        exprs = rule_expressions(path) if path == RULES else dashboard_expressions(path)
        assert exprs, f"no PromQL read from {path}"
        for expr in exprs:
            for name in METRIC.findall(expr):
                wanted.setdefault(name, set()).add(path.name)
    assert len(wanted) >= 10, sorted(wanted)
    missing = {name: sorted(files) for name, files in wanted.items() if name not in exported}
    assert not missing, f"named in PromQL but exported by no process: {missing}"


def test_the_name_reader_sees_labelled_families_before_their_first_sample() -> None:
    exposition = (
        "# HELP vigil_a_total a\n# TYPE vigil_a_total counter\n"
        "# HELP vigil_b_seconds b\n# TYPE vigil_b_seconds histogram\n"
        'vigil_b_seconds_bucket{le="1.0"} 2.0\n'
        "# TYPE vigil_c gauge\nvigil_c 1.0\n"
    )
    names = exported_names(exposition)
    assert {"vigil_a_total", "vigil_b_seconds_count", "vigil_b_seconds_sum", "vigil_c"} <= names
    assert "vigil_a" not in names
