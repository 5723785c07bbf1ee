"""deploy/prometheus (alert rules) and deploy/grafana (a dashboard): the rules pass promtool's
check and its unit tests on sample series, and every metric the rules and the dashboard
query is one optgate's /metrics exposes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.runtime.service import Running
from tests.support.api import call

pytestmark = pytest.mark.pure

DEPLOY = Path(__file__).parents[1] / "deploy"
RULES = DEPLOY / "prometheus" / "optgate-rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "optgate-rules.test.yml"
DASHBOARD = DEPLOY / "grafana" / "optgate.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool is missing: scripts/setup-system installs it (Debian's prometheus)")
    return subprocess.run(  # noqa: S603 - a fixed tool and our own files
        [tool, *args], capture_output=True, text=True, check=False, cwd=RULES.parent
    )


@pytest.mark.sockets
def test_the_rules_pass_promtool_check() -> None:
    checked = promtool("check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


@pytest.mark.sockets
def test_the_rules_unit_tests_pass() -> None:
    tested = promtool("test", "rules", RULE_TESTS.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    alerts = {
        rule["alert"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    assert alerts == fired  # every alert is shown to fire on some sample series


def _exposed(exposition: str) -> set[str]:
    """The sample names an exposition's families give (labelled ones without samples too)."""
    names = set()
    for family in text_string_to_metric_families(exposition):
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
    return names


def _queries() -> list[str]:
    expressions = [
        target["expr"]
        for panel in json.loads(DASHBOARD.read_text())["panels"]
        for target in panel.get("targets", [])
    ]
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return expressions + [rule["expr"] for group in groups for rule in group["rules"]]


async def test_every_queried_metric_is_exposed(gate: Running) -> None:
    answer = await call(gate.api_port, "GET", "/metrics")
    assert answer.status == 200
    exposed = _exposed(str(answer.body))
    recorded = {
        rule["record"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    queried, derived = set(), set()
    for expression in _queries():
        queried |= set(re.findall(r"\boptgate_[a-z0-9_]+", expression))
        derived |= set(re.findall(r"\boptgate:[a-z0-9_:]+", expression))
    assert queried, "no metric found in the queries"
    assert queried - exposed == set()
    assert derived - recorded == set()
    # the dashboard shows the rates the alerts watch, and the audit gauges
    shown = DASHBOARD.read_text()
    for needed in (
        "optgate:complaint_ratio:1d",
        "optgate:hard_bounce_ratio:1d",
        "optgate:relay_temporary_ratio:15m",
        "optgate_audit_chain_intact",
        "optgate_audit_verified_timestamp_seconds",
    ):
        assert needed in shown, needed


def test_the_dashboard_is_importable_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "optgate"
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
