"""The deployment samples stay in step with the code: metric names, drain timing, commands."""

from __future__ import annotations

import json
import re
from pathlib import Path

from gateway.metrics import STAGES, Metrics

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"


def exposed_metric_names() -> set[str]:
    """Series names /metrics can carry (labelled series appear only once used)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


def test_dashboard_queries_only_metrics_the_gateway_exposes() -> None:
    dashboard = json.loads((DEPLOY / "grafana/dashboards/gateway.json").read_text("utf-8"))
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert exprs
    known = exposed_metric_names()
    for expr in exprs:
        for name in re.findall(r"\bgateway_[a-z_]+", expr):
            assert name in known, (name, expr)
        for stage in re.findall(r'stage="([a-z_]+)"', expr):
            assert stage in STAGES, stage


def test_kubernetes_grace_period_outlasts_the_drain() -> None:
    manifest = (DEPLOY / "kubernetes/gateway.yaml").read_text("utf-8")
    grace = int(re.search(r"terminationGracePeriodSeconds: (\d+)", manifest).group(1))  # type: ignore[union-attr]
    drain = int(re.search(r'name: DRAIN_TIMEOUT, value: "(\d+)"', manifest).group(1))  # type: ignore[union-attr]
    assert grace > drain
    assert "path: /readyz" in manifest and "path: /healthz" in manifest


def test_compose_stop_grace_outlasts_the_drain_and_image_runs_serve() -> None:
    compose = (DEPLOY / "docker-compose.yml").read_text("utf-8")
    grace = int(re.search(r"stop_grace_period: (\d+)s", compose).group(1))  # type: ignore[union-attr]
    drain = int(re.search(r'DRAIN_TIMEOUT: "(\d+)"', compose).group(1))  # type: ignore[union-attr]
    assert grace > drain
    dockerfile = (DEPLOY / "Dockerfile").read_text("utf-8")
    assert 'CMD ["gateway", "serve"]' in dockerfile
    assert "COPY codecs ./codecs" in dockerfile  # the telecodecs package ships from codecs/
