"""Dashboards and alerts as code: the committed files are what the definition renders, the
rules pass `promtool check rules` (Debian's prometheus package, installed by tools/setup), the
ServiceMonitors match the Prometheus operator's schema, and every service gets the same panels.
(That each metric named is exported is tests/e2e/test_metrics.py's check, on the running fleet.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tools.monitoring.definition import (
    GRPC_SERVICES,
    SERVICES,
    dashboard,
    exported_names_used,
    metric_names,
)
from tools.monitoring.manifests import (
    COMPONENT,
    DASHBOARD_FILE,
    HELM_VALUES_FILE,
    REPO,
    RULES_FILE,
    rendered,
)


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool not found: tools/setup installs Debian's prometheus package"
    return found


def test_committed_files_are_what_the_definition_renders() -> None:
    stale = [
        name
        for name, text in rendered().items()
        if not (COMPONENT / name).is_file() or (COMPONENT / name).read_text() != text
    ]
    assert stale == [], f"run python -m tools.monitoring ({stale})"


def test_rules_pass_promtool() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(COMPONENT / RULES_FILE)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 22 rules found" in result.stdout


def test_the_operator_gets_the_rules_promtool_checked(tmp_path: Path) -> None:
    """kube-prometheus-stack's values carry the rule groups (it makes a PrometheusRule of
    them): written out as a rule file, they pass promtool, and they are the rule file's."""
    values = yaml.safe_load((COMPONENT / HELM_VALUES_FILE).read_text())
    groups = values["additionalPrometheusRulesMap"]["emporium"]["groups"]
    assert groups == yaml.safe_load((COMPONENT / RULES_FILE).read_text())["groups"]
    rule_file = tmp_path / "from-values.yml"
    rule_file.write_text(yaml.safe_dump({"groups": groups}))
    result = subprocess.run(
        [promtool(), "check", "rules", str(rule_file)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    broken = {"groups": [{"name": "x", "rules": [{"alert": "X", "expr": "sum(rate(x[5m]"}]}]}
    path = tmp_path / "broken.rules.yml"
    path.write_text(yaml.safe_dump(broken))
    result = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True)
    assert result.returncode != 0


def _schema(group: str, kind: str) -> dict[str, Any]:
    root = Path(os.environ.get("EMPORIUM_CRD_SCHEMAS", str(REPO / "mesh" / "schemas")))
    return dict(json.loads((root / group / f"{kind}_v1.json").read_text()))


def test_service_monitors_match_the_operator_schema() -> None:
    documents = list(yaml.safe_load_all((COMPONENT / "servicemonitors.yaml").read_text()))
    assert sorted(d["metadata"]["name"] for d in documents) == sorted(SERVICES)
    schema = _schema("monitoring.coreos.com", "servicemonitor")
    for document in documents:
        jsonschema.validate(document, schema)
    bad = {**documents[0], "spec": {**documents[0]["spec"], "endpoints": "metrics"}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_every_grpc_service_gets_the_same_panels() -> None:
    panels = dashboard()["panels"]
    titles: dict[str, list[str]] = {}
    current = ""
    for panel in panels:
        if panel["type"] == "row":
            current = panel["title"]
            continue
        titles.setdefault(current, []).append(panel["title"])
    per_service = [titles[service] for service in GRPC_SERVICES]
    assert all(t == per_service[0] for t in per_service) and len(per_service[0]) >= 3
    exprs = [t["expr"] for p in panels if p["title"] == "Rate by method" for t in p["targets"]]
    assert len(exprs) == len(GRPC_SERVICES)
    assert all("$service" not in e for e in exprs)  # each row is bound to its service
    assert json.loads((COMPONENT / DASHBOARD_FILE).read_text())["uid"] == "emporium-overview"


def test_metric_names_in_an_expression() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (rpc_method, le) (rate(a_bucket{x="y", le="5"}[5m])))'
        " / ignoring(z) b_total offset 15m - emporium:rule:ratio_rate5m > 2"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "emporium:rule:ratio_rate5m"}
    assert {"rpc_server_duration_milliseconds_bucket", "emporium_orders_placed_total"} <= (
        exported_names_used()
    )
