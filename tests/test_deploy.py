"""The deployment samples stay in step with the code (issue 12 items 7 and 8).

Dashboard and alert rules query only metrics the gateway declares, with a legend and the
datasource variable everywhere; the alert rules pass ``promtool check rules`` and their unit
tests; the Kubernetes manifest passes ``kubernetes-validate --strict`` (offline, bundled
schemas) and its shutdown timing adds up; the Dockerfile and ``.dockerignore`` are checked
statically (no Docker engine here).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import Settings
from gateway.metrics import CALLER_STAGES, INTERNAL_STAGES, STAGES, Metrics
from gateway.server import keys
from gateway.server.app import create_app
from tests.conftest import TIMEOUT, free_port, make_settings
from tests.test_metrics import promtool, value

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana/dashboards/gateway.json"
ALERTS = DEPLOY / "prometheus/alerts.yml"
PROMETHEUS = DEPLOY / "prometheus/prometheus.yml"
KUBERNETES = DEPLOY / "kubernetes/gateway.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S_USER = 10001


def exposed_metric_names() -> set[str]:
    """Series names the gateway's /metrics carries (gateway_* families of gateway/metrics.py)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text("utf-8"))
    return loaded


def dashboard_targets() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(panel, target) for panel in dashboard()["panels"] for target in panel["targets"]]


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text("utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def stages_in(expr: str) -> set[str]:
    """Stages an expression selects: ``stage="x"``, ``stage=~"a|b"``, ``stage!~"a|b"``."""
    found: set[str] = set()
    for op, match in re.findall(r'stage(=~?|!~)"([a-z_|]+)"', expr):
        named = set(match.split("|"))
        assert named <= set(STAGES), (named - set(STAGES), expr)
        found |= set(STAGES) - named if op == "!~" else named
    return found


# ---------------------------------------------------------------- dashboard + alerts: metrics


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_queries_use_only_metrics_and_stages_the_gateway_exposes(source: str) -> None:
    if source == "dashboard":
        exprs = [target["expr"] for _, target in dashboard_targets()]
    else:
        exprs = [rule["expr"] for rule in alert_rules()]
    assert exprs
    known = exposed_metric_names()
    for expr in exprs:
        for name in re.findall(r"\bgateway_[a-z_]+", expr):
            assert name in known, (name, expr)
        assert stages_in(expr) <= set(STAGES), expr


# ---------------------------------------------------------------- dashboard


def test_every_dashboard_target_has_a_legend() -> None:
    for panel, target in dashboard_targets():
        legend = target.get("legendFormat", "")
        assert legend.strip(), (panel["title"], target["expr"])
        # A query grouped by labels names them in its legend, so series can be told apart.
        grouped = re.search(r"\bby \(([a-z_, ]+)\)", target["expr"])
        if grouped:
            for label in grouped.group(1).replace(" ", "").split(","):
                if label != "le":
                    assert "{{" + label + "}}" in legend, (panel["title"], label, legend)


def test_every_panel_and_target_uses_the_datasource_variable() -> None:
    variables = dashboard()["templating"]["list"]
    datasource = [v for v in variables if v["type"] == "datasource"]
    assert len(datasource) == 1 and datasource[0]["query"] == "prometheus"
    ref = "${" + datasource[0]["name"] + "}"
    for panel in dashboard()["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": ref}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": ref}, panel["title"]


def test_caller_felt_latency_stages_are_apart_from_internal_ones() -> None:
    by_panel: dict[str, set[str]] = {}
    for panel, target in dashboard_targets():
        if "stage=~" in target["expr"] or "stage!~" in target["expr"]:
            by_panel.setdefault(panel["title"], set()).update(stages_in(target["expr"]))
    assert sorted(by_panel.values(), key=len) == [set(CALLER_STAGES), set(INTERNAL_STAGES)]
    # No panel mixes the two groups (the single-stage turn/heard panels included).
    for panel, target in dashboard_targets():
        stages = stages_in(target["expr"])
        assert stages <= set(CALLER_STAGES) or stages <= set(INTERNAL_STAGES), panel["title"]
    # An unfiltered stage query would mix them again.
    for _, target in dashboard_targets():
        if "gateway_stage_latency_seconds" in target["expr"]:
            assert stages_in(target["expr"]), target["expr"]


def test_dashboard_has_a_leaked_tasks_panel() -> None:
    panels = [p for p in dashboard()["panels"] if "leak" in p["title"].lower()]
    assert len(panels) == 1
    exprs = " ".join(t["expr"] for t in panels[0]["targets"])
    assert "gateway_call_tasks_leaked_total" in exprs
    assert "gateway_asyncio_tasks" in exprs and "gateway_active_calls" in exprs


def test_dashboard_panels_have_unique_ids_and_do_not_overlap() -> None:
    panels = dashboard()["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not mine & cells, panel["title"]
        cells |= mine


def test_dashboard_expressions_parse_as_promql(tmp_path: Path) -> None:
    """Every panel query, wrapped as a recording rule, passes ``promtool check rules``."""
    binary = promtool()
    rules = [
        {"record": f"dashboard:query_{i}", "expr": target["expr"]}
        for i, (_, target) in enumerate(dashboard_targets())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [binary, "check", "rules", str(path)], capture_output=True, timeout=TIMEOUT, check=False
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


# ---------------------------------------------------------------- prometheus alerts


def test_alert_rules_pass_promtool_check_rules() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(ALERTS)],
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout.decode()


def test_alert_rules_fire_on_gateway_series() -> None:
    """``promtool test rules``: turn latency, Hamsa circuit, leaks, capacity, agent errors."""
    result = subprocess.run(
        [promtool(), "test", "rules", "alerts_test.yml"],
        cwd=REPO / "tests/deploy",
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


async def test_an_idle_gateway_runs_far_fewer_tasks_than_the_leak_alert_threshold(
    aiohttp_client, tmp_path: Path
) -> None:
    """GatewayAsyncioTasksWithoutCalls must not fire on a healthy idle gateway (all backends on).

    Hamsa runs in its own process here, as in production (the embedded simulator would add
    its own server tasks to the gateway's loop): what is left is the gateway's own tasks, a
    few fixed ones plus one keep-alive per warm pool socket (the pool's target: the burst
    reserve, twice it with the playout lead split).
    """
    rule = next(r for r in alert_rules() if r["alert"] == "GatewayAsyncioTasksWithoutCalls")
    threshold = int(re.search(r"\) > (\d+)", rule["expr"]).group(1))  # type: ignore[union-attr]
    hamsa_port = free_port()
    hamsa = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "gateway", "sim-hamsa", "--port", str(hamsa_port)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        settings = make_settings(
            audiosocket_port=free_port(),
            hamsa_api_key="test-key",
            hamsa_base_url=f"http://127.0.0.1:{hamsa_port}",
        )
        client = await aiohttp_client(create_app(settings))
        warm = client.app[keys.SPEECH].pool.status()["target_idle"]
        deadline = asyncio.get_running_loop().time() + 30.0
        while True:  # until the warm pool is full
            text = await (await client.get("/metrics")).text()
            if value(text, "gateway_hamsa_pool_idle") == warm:
                break
            assert asyncio.get_running_loop().time() < deadline, text
            await asyncio.sleep(0.2)
        idle = value(text, "gateway_asyncio_tasks")
    finally:
        hamsa.terminate()
        await asyncio.wait_for(hamsa.wait(), 10)
    assert idle is not None and idle >= warm
    assert idle - warm < threshold / 3, (idle, warm, threshold)  # the alert's measure
    assert idle <= warm + 10, (idle, warm)  # one per warm socket plus a few fixed ones


def test_every_alert_has_a_severity_and_a_summary() -> None:
    rules = alert_rules()
    assert len(rules) >= 10
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    names = {rule["alert"] for rule in rules}
    assert {"GatewayTurnLatencyHigh", "GatewayCallTasksLeaked", "GatewayHamsaCircuitOpen"} <= names


def test_prometheus_loads_the_alert_rules() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text("utf-8"))
    assert config["rule_files"] == ["alerts.yml"]  # relative to prometheus.yml
    result = subprocess.run(
        [promtool(), "check", "config", str(PROMETHEUS)],
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    # docker-compose mounts the rules beside the config, where rule_files looks.
    prometheus = yaml.safe_load(COMPOSE.read_text("utf-8"))["services"]["prometheus"]
    assert "./prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in prometheus["volumes"]
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    # GatewayDown watches the job prometheus.yml scrapes.
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    down = next(rule for rule in alert_rules() if rule["alert"] == "GatewayDown")
    assert re.search(r'job="([^"]+)"', down["expr"]).group(1) in jobs  # type: ignore[union-attr]


# ---------------------------------------------------------------- kubernetes


def k8s_docs() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(KUBERNETES.read_text("utf-8"))}


def k8s_container() -> dict[str, Any]:
    containers = k8s_docs()["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def k8s_env() -> dict[str, str]:
    return {e["name"]: e["value"] for e in k8s_container()["env"] if "value" in e}


def kubernetes_validate(*files: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", *map(str, files)],
        capture_output=True,
        timeout=60,
        check=False,
    )


def test_kubernetes_manifest_passes_kubernetes_validate_strict(tmp_path: Path) -> None:
    result = kubernetes_validate(KUBERNETES)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    out = result.stdout.decode() + result.stderr.decode()
    for kind in ("deployment", "service", "poddisruptionbudget", "horizontalpodautoscaler"):
        assert f"passed for resource {kind}/voice-gateway" in out, out
    # The same check rejects a misspelt field: --strict is in force with the bundled schemas.
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        KUBERNETES.read_text("utf-8").replace(
            "readOnlyRootFilesystem: true", "readOnlyRootFileSystem: true", 1
        )
    )
    rejected = kubernetes_validate(broken)
    assert rejected.returncode != 0
    assert "readOnlyRootFileSystem" in rejected.stdout.decode() + rejected.stderr.decode()


def test_kubernetes_pod_runs_as_numeric_non_root_with_least_privilege() -> None:
    pod = k8s_docs()["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == K8S_USER
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    ctx = k8s_container()["securityContext"]
    assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == K8S_USER
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    # A read-only root needs a writable /tmp (tempfile users).
    assert {"name": "tmp", "mountPath": "/tmp"} in k8s_container()["volumeMounts"]


def test_kubernetes_grace_period_outlasts_prestop_plus_drain() -> None:
    """Endpoint removal (preStop sleep) + DRAIN_TIMEOUT + margin < SIGKILL."""
    pod = k8s_docs()["Deployment"]["spec"]["template"]["spec"]
    grace = pod["terminationGracePeriodSeconds"]
    command = k8s_container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    prestop = int(command[1])
    assert prestop >= 5  # endpoint removal reaches kube-proxy and load balancers in seconds
    env = k8s_env()
    # The manifest's DRAIN_TIMEOUT, or the gateway's default when the manifest leaves it out.
    drain = float(env["DRAIN_TIMEOUT"]) if "DRAIN_TIMEOUT" in env else Settings().drain_timeout
    assert grace >= prestop + drain + 5, (grace, prestop, drain)
    # Readiness turns 503 on SIGTERM; a probe period longer than the preStop sleep would route
    # calls to a draining pod.
    assert k8s_container()["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert k8s_container()["readinessProbe"]["periodSeconds"] < prestop


def test_kubernetes_probes_startup_readiness_liveness() -> None:
    container = k8s_container()
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_kubernetes_disruption_budget_and_autoscaler_on_active_calls() -> None:
    docs = k8s_docs()
    selector = docs["Deployment"]["spec"]["selector"]
    assert docs["PodDisruptionBudget"]["apiVersion"] == "policy/v1"
    assert docs["PodDisruptionBudget"]["spec"]["selector"] == selector
    assert docs["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    hpa = docs["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2  # the PDB can then always let one go
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    assert name == "gateway_active_calls" and name in exposed_metric_names()
    target = float(metric["pods"]["target"]["averageValue"])
    assert 0 < target < int(k8s_env()["MAX_CALLS"])  # scale before pods refuse calls


def test_kubernetes_service_carries_http_and_audiosocket() -> None:
    container = k8s_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == int(k8s_env().get("PORT", Settings().port))
    assert ports["audiosocket"] == int(k8s_env()["AUDIOSOCKET_PORT"])
    service = {p["name"]: p for p in k8s_docs()["Service"]["spec"]["ports"]}
    assert service["audiosocket"]["targetPort"] == "audiosocket"
    assert service["audiosocket"]["protocol"] == "TCP"
    assert service["http"]["targetPort"] == "http"


def test_kubernetes_image_is_pinned() -> None:
    image = k8s_container()["image"]
    name, _, tag = image.rpartition(":")
    assert name and re.fullmatch(r"\d+\.\d+\.\d+", tag), image  # a release tag, never :latest
    assert "latest" not in image


# ---------------------------------------------------------------- docker


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text("utf-8"))
    result = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, args = line.strip().partition(" ")
            result.append((instruction.upper(), args.strip()))
    return result


def test_dockerfile_installs_dependencies_before_copying_the_source() -> None:
    steps = dockerfile_instructions()
    copies = [i for i, (ins, _) in enumerate(steps) if ins == "COPY"]
    first_copy = steps[copies[0]][1]
    assert first_copy.split()[:-1] == ["pyproject.toml"], first_copy
    deps = next(i for i, (ins, args) in enumerate(steps) if ins == "RUN" and "-r " in args)
    source = next(i for i in copies if steps[i][1].startswith("gateway "))
    assert copies[0] < deps < source
    final = next(
        i for i, (ins, args) in enumerate(steps) if ins == "RUN" and "install --no-deps" in args
    )
    assert final > source
    # The dependency list comes from pyproject.toml, the single place it is written.
    assert "tomllib" in steps[deps][1] and "['project']['dependencies']" in steps[deps][1]
    assert tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["project"]["dependencies"]


def test_dockerfile_runs_as_the_numeric_user_kubernetes_expects() -> None:
    steps = dockerfile_instructions()
    users = [args for ins, args in steps if ins == "USER"]
    assert users == [f"{K8S_USER}:{K8S_USER}"]
    assert any(ins == "RUN" and f"--uid {K8S_USER}" in args for ins, args in steps)


def test_dockerfile_exposes_http_and_audiosocket_ports() -> None:
    exposed = {
        int(p) for ins, args in dockerfile_instructions() if ins == "EXPOSE" for p in args.split()
    }
    k8s_ports = {p["containerPort"] for p in k8s_container()["ports"]}
    assert exposed == k8s_ports == {8080, 9092}
    assert ("CMD", '["gateway", "serve"]') in dockerfile_instructions()


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus ``**``) as a regex over paths."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignored(path: str) -> bool:
    """Whether the root .dockerignore keeps ``path`` (or a parent folder) out of the context."""
    lines = (REPO / ".dockerignore").read_text("utf-8").splitlines()
    patterns = [_ignore_regex(line.strip()) for line in lines if line.strip() and line[0] != "#"]
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    return any(p.fullmatch(prefix) for p in patterns for prefix in prefixes)


def test_dockerignore_keeps_local_state_out_and_what_the_image_needs_in() -> None:
    # The build context is the repository root (docker-compose: context ..), where it lives.
    gateway = yaml.safe_load(COMPOSE.read_text("utf-8"))["services"]["gateway"]
    assert gateway["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    for path in (".git/HEAD", ".venv/bin/python", "gateway/__pycache__/x.pyc", "tests/x.py"):
        assert dockerignored(path), path
    assert dockerignored("demo-reply.wav") and dockerignored(".env")
    copied = [args.split()[:-1] for ins, args in dockerfile_instructions() if ins == "COPY"]
    for sources in copied:
        for source in sources:
            assert not dockerignored(source), source
    package_files = [
        str(p.relative_to(REPO)) for d in ("gateway", "codecs") for p in (REPO / d).rglob("*")
    ]
    packaged = [p for p in package_files if "__pycache__" not in p and not p.endswith(".pyc")]
    assert "gateway/sim/assets/demo_utterance.wav" in packaged  # package data reaches the image
    assert not [p for p in packaged if dockerignored(p)]


def test_compose_stop_grace_outlasts_the_drain_and_images_are_pinned() -> None:
    compose = yaml.safe_load(COMPOSE.read_text("utf-8"))
    gateway = compose["services"]["gateway"]
    grace = int(re.fullmatch(r"(\d+)s", gateway["stop_grace_period"]).group(1))  # type: ignore[union-attr]
    assert grace > float(gateway["environment"]["DRAIN_TIMEOUT"])
    for name, service in compose["services"].items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), (name, image)
