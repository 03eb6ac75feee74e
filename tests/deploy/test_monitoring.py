"""deploy/monitoring: the alert rules and the Grafana dashboard parse as PromQL, and
every series they name is one obdsnap exports."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from support.server_process import ServerProcess

from .kustomize import REPO_ROOT, find, render

MONITORING_DIR = REPO_ROOT / "deploy" / "monitoring"
RULES = MONITORING_DIR / "prometheus-rules.yaml"
DASHBOARD = MONITORING_DIR / "grafana-dashboard.json"

# The series obdsnap exports, by type, as the metrics contract names them.
GAUGES = (
    "is_alive",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
    "obdsnap_requests_in_flight",
    "obdsnap_requests_waiting",
    "obdsnap_device_ops_in_flight",
    "obdsnap_device_ops_waiting",
    "obdsnap_devices_attached",
    "obdsnap_intents_open",
    "obdsnap_snapshots",
    "obdsnap_build_info",
)
COUNTERS = (
    "grpc_error_count",
    "process_cpu_seconds_total",
    "obdsnap_requests_total",
    "obdsnap_attach_failures_total",
)
HISTOGRAMS = (
    "grpc_latency_seconds",
    "obdsnap_attach_seconds",
    "obdsnap_metadata_commit_batch_size",
    "obdsnap_metadata_commit_seconds",
)
CONTRACT = frozenset(
    [*GAUGES, *COUNTERS]
    + [f"{name}{suffix}" for name in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")]
)
# Made by Prometheus for every target, not by obdsnap.
SCRAPE_SERIES = frozenset({"up"})
# Grafana's own variables in range selectors, and a value PromQL takes in their place.
GRAFANA_RANGES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def panel_expressions() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel, rows included."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for panel in all_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_RANGES.items():
                expr = expr.replace(variable, value)
            found.append((panel["title"], expr))
    return found


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def expressions() -> list[tuple[str, str]]:
    return [(f"rule {r['alert']}", r["expr"]) for r in rules()] + [
        (f"panel {title}", expr) for title, expr in panel_expressions()
    ]


def metric_names(expr: str) -> set[str]:
    """The metric name of every vector selector in ``expr``, from its parsed AST."""
    names: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            names.add(selector_name(node))

    promql_parser.walk(promql_parser.parse(expr), pre_visit=visit)
    return names


def selector_name(selector: Any) -> str:
    if selector.name:
        return str(selector.name)
    for matcher in selector.matchers.matchers:
        if matcher.name == "__name__" and matcher.op == promql_parser.MatchOp.Equal:
            return str(matcher.value)
    raise AssertionError(f"a selector without one metric name: {selector}")


def named_metrics() -> dict[str, set[str]]:
    """Each metric the rules and panels name, and where."""
    found: dict[str, set[str]] = {}
    for where, expr in expressions():
        for name in metric_names(expr):
            found.setdefault(name, set()).add(where)
    return found


# The files.


def test_every_expression_parses_as_promql() -> None:
    exprs = expressions()
    assert len(exprs) > 20
    for where, expr in exprs:
        try:
            promql_parser.parse(expr)
        except ValueError as exc:
            raise AssertionError(f"{where}: {expr}: {exc}") from None


def test_a_broken_expression_is_rejected() -> None:
    with pytest.raises(ValueError):
        promql_parser.parse("sum by (function) (rate(obdsnap_requests_total[5m])")


def test_metric_names_come_from_the_ast() -> None:
    expr = (
        'sum(rate(a_total{code!~"OK"}[5m])) / on(instance) b or absent({__name__="c"})'
        ' + histogram_quantile(0.99, sum by (le) (rate(d_bucket{x="metric_in_a_string"}[5m])))'
    )
    assert metric_names(expr) == {"a_total", "b", "c", "d_bucket"}


def test_every_rule_is_complete() -> None:
    alerts = [rule["alert"] for rule in rules()]
    assert len(alerts) == len(set(alerts)), alerts
    for rule in rules():
        assert rule.get("for"), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        for annotation in ("summary", "description", "runbook"):
            assert rule["annotations"].get(annotation), (rule["alert"], annotation)
        assert "README.md" in rule["annotations"]["runbook"], rule["alert"]


def test_the_rules_cover_what_an_operator_needs() -> None:
    by_metric = {name: where for name, where in named_metrics().items()}
    rule_metrics = {
        name for name, where in by_metric.items() if any(w.startswith("rule ") for w in where)
    }
    assert {
        "up",
        "is_alive",
        "obdsnap_requests_total",
        "obdsnap_attach_failures_total",
        "grpc_latency_seconds_bucket",
        "obdsnap_requests_waiting",
        "obdsnap_device_ops_waiting",
        "obdsnap_intents_open",
    } <= rule_metrics


def test_the_dashboard_shows_every_series_obdsnap_exports() -> None:
    panel_metrics = {
        name
        for name, where in named_metrics().items()
        if any(w.startswith("panel ") for w in where)
    }
    histograms = {name for name in HISTOGRAMS if f"{name}_bucket" in panel_metrics}
    missing = set(GAUGES + COUNTERS + HISTOGRAMS) - panel_metrics - histograms
    assert not missing, f"no panel shows {sorted(missing)}"


def test_the_dashboard_takes_its_prometheus_as_a_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert dashboard["schemaVersion"] >= 36
    for panel in all_panels(dashboard["panels"]):
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]


def test_every_named_metric_is_in_the_contract() -> None:
    unknown = {
        name: sorted(where)
        for name, where in named_metrics().items()
        if name not in CONTRACT | SCRAPE_SERIES
    }
    assert not unknown, unknown


def test_the_configmaps_carry_the_files_as_they_are() -> None:
    import kubernetes_validate

    objects = render(MONITORING_DIR)
    for obj in objects:
        kubernetes_validate.validate(obj, "1.30", strict=True)
    rules_map = find(objects, "ConfigMap", "obdsnap-prometheus-rules")
    assert rules_map["data"]["obdsnap.rules.yaml"] == RULES.read_text()
    dashboard_map = find(objects, "ConfigMap", "obdsnap-grafana-dashboard")
    assert dashboard_map["data"]["obdsnap.json"] == DASHBOARD.read_text()
    assert dashboard_map["metadata"]["labels"]["grafana_dashboard"] == "1"


# A live obdsnap.


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def scrape(url: str, timeout_s: float = 10.0) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                body: bytes = response.read()
            return body.decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def exposed_names(text: str) -> set[str]:
    """The names PromQL can select in an exposition: every sample's, and those of families
    with no sample yet (prometheus_client reports a counter family without ``_total``)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
        if family.type == "histogram":
            names.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        elif family.type == "counter":
            names.update({family.name, f"{family.name}_total"})
        else:
            names.add(family.name)
    return names


def test_every_named_metric_is_exported_by_obdsnap(tmp_path: Path) -> None:
    port = free_port()
    settings: dict[str, object] = {
        "exporterConfig": {"enable": True, "port": port, "host": "127.0.0.1"}
    }
    with ServerProcess.with_config(tmp_path, settings):
        exposed = exposed_names(scrape(f"http://127.0.0.1:{port}/metrics"))
    missing = {
        name: sorted(where)
        for name, where in named_metrics().items()
        if name not in exposed | SCRAPE_SERIES
    }
    assert not missing, f"not in obdsnap's exposition: {missing}"
