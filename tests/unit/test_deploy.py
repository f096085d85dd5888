"""Deploy files are for users with Docker or Kubernetes (neither runs here): checked structurally.
Every file parses, every file a mount refers to exists, and the places that name the metrics
port, the config file, the state directory and the Grafana datasource agree."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.config import DEFAULT_CONFIG, Runtime, load_config
from tests.unit.test_alerts import casewatch_metrics, exported_metric_names

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "casewatch.json"
METRICS_PORT = Runtime().metrics_port  # the default every deploy file must agree with
API_PORT = Runtime().api_port
WORKERS = ("worker-1", "worker-2")
# Grafana variables the dashboard may use (tests/integration/test_dashboard.py substitutes them).
GRAFANA_VARIABLES = {"$__rate_interval", "$__interval", "$__range"}


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def k8s() -> dict[str, dict[str, Any]]:
    """The Kubernetes objects, by kind (one each)."""
    docs = [d for f in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())]
    objects = [d for d in docs if d.get("kind") != "Kustomization"]
    by_kind = {d["kind"]: d for d in objects}
    assert len(by_kind) == len(objects), "one object of each kind expected"
    return by_kind


def env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """A compose service's volumes as {target: source}."""
    return {v.split(":")[1]: v.split(":")[0] for v in service.get("volumes", [])}


def panels() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [p for p in dashboard["panels"] if p["type"] != "row"]


@pytest.mark.parametrize(
    "file",
    sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yml", ".yaml"}),
    ids=lambda p: str(p.relative_to(DEPLOY)),
)
def test_every_deploy_yaml_file_parses(file: Path) -> None:
    docs = list(yaml.safe_load_all(file.read_text()))
    assert docs
    assert all(isinstance(d, dict) for d in docs)


def test_compose_runs_kafka_topics_two_workers_prometheus_and_grafana() -> None:
    services = compose()["services"]
    assert set(services) == {"kafka", "topics", *WORKERS, "prometheus", "grafana"}
    assert services["kafka"]["image"] == "apache/kafka:4.1.1"
    assert "INTERNAL://kafka:9092" in services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert services["topics"]["command"] == ["topics"]
    for name in ("topics", *WORKERS):
        svc = services[name]
        assert (COMPOSE.parent / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
        assert svc["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert (
            mounts(svc)[svc["environment"]["CASEWATCH_CONFIG"]]
            == "../pipeline/defaults/casewatch.yaml"
        )
    for name in WORKERS:
        assert services[name]["command"] == ["worker"]
        assert (
            services[name]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
        )


def test_compose_files_mounted_from_the_repo_exist() -> None:
    for name, svc in compose()["services"].items():
        for source in mounts(svc).values():
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in compose()["volumes"], f"{name}: volume {source} is not declared"


def test_compose_workers_share_a_group_and_keep_their_own_rocksdb_state() -> None:
    services = compose()["services"]
    states = set()
    for name in WORKERS:
        environment = services[name]["environment"]
        assert environment["CASEWATCH_STORE"] == "memory://"
        states.add(mounts(services[name])[environment["CASEWATCH_STATE_DIR"]])
    assert len(states) == len(WORKERS)  # one volume each
    assert states <= set(compose()["volumes"])
    # one config file: one pipeline.app_id, one consumer group
    assert len({services[n]["environment"]["CASEWATCH_CONFIG"] for n in WORKERS}) == 1


def test_metrics_port_agrees_across_compose_prometheus_dockerfile_and_kubernetes() -> None:
    services = compose()["services"]
    host_ports = set()
    for name in WORKERS:
        assert services[name]["environment"]["CASEWATCH_METRICS_PORT"] == str(METRICS_PORT)
        (published,) = [p for p in services[name]["ports"] if p.endswith(f":{METRICS_PORT}")]
        host, container = published.split(":")
        assert container == str(METRICS_PORT)
        host_ports.add(host)
    assert len(host_ports) == len(WORKERS)
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = scrape["scrape_configs"]
    assert job["job_name"] == "casewatch"  # the alert rules select up{job="casewatch"}
    (targets,) = job["static_configs"]
    assert sorted(targets["targets"]) == [f"{w}:{METRICS_PORT}" for w in WORKERS]
    dockerfile = (REPO / "Dockerfile").read_text()
    assert f"EXPOSE {METRICS_PORT}" in dockerfile
    assert f"CASEWATCH_METRICS_PORT={METRICS_PORT}" in dockerfile
    pod = k8s()["StatefulSet"]["spec"]["template"]
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(METRICS_PORT)
    (container,) = pod["spec"]["containers"]
    assert env(container)["CASEWATCH_METRICS_PORT"] == str(METRICS_PORT)
    assert {"name": "metrics", "containerPort": METRICS_PORT} in container["ports"]
    ports = {p["name"]: p for p in k8s()["Service"]["spec"]["ports"]}
    assert (ports["metrics"]["port"], ports["metrics"]["targetPort"]) == (METRICS_PORT, "metrics")


def test_the_case_api_port_and_advertised_host_agree_across_compose_dockerfile_and_kubernetes() -> (
    None
):
    services = compose()["services"]
    for name in WORKERS:
        environment = services[name]["environment"]
        assert environment["CASEWATCH_API_PORT"] == str(API_PORT)
        assert f":{API_PORT}" in " ".join(services[name]["ports"])
        assert services[name]["hostname"] == name  # the other worker reaches it by this name
        assert environment["CASEWATCH_STAFF_TOKENS"]
    dockerfile = (REPO / "Dockerfile").read_text()
    assert f"CASEWATCH_API_PORT={API_PORT}" in dockerfile
    (container,) = k8s()["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    assert env(container)["CASEWATCH_API_PORT"] == str(API_PORT)
    service = k8s()["Service"]
    # each pod is reached by its own name under the headless Service
    assert service["spec"]["clusterIP"] == "None"
    host = env(container)["CASEWATCH_API_HOST"]
    assert (
        host == f"$(POD_NAME).{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
    )
    assert {"name": "api", "containerPort": API_PORT} in container["ports"]
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert (ports["api"]["port"], ports["api"]["targetPort"]) == (API_PORT, "api")
    secret = k8s()["Secret"]["stringData"]
    assert {"CASEWATCH_STAFF_TOKENS", "CASEWATCH_CUSTOMER_TOKENS"} <= set(secret)


def test_compose_prometheus_loads_the_rules_and_grafana_the_dashboard() -> None:
    services = compose()["services"]
    prometheus = mounts(services["prometheus"])
    assert prometheus["/etc/prometheus/prometheus.yml"] == "./prometheus/prometheus.yml"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert scrape["rule_files"] == ["rules/*.yml"]  # relative to the config file
    assert prometheus["/etc/prometheus/rules"] == "./prometheus/rules"
    grafana = mounts(services["grafana"])
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/casewatch.yml").read_text())
    (dashboards,) = provider["providers"]
    assert grafana[dashboards["options"]["path"]] == "./grafana/dashboards"
    for kind in ("datasources", "dashboards"):
        assert grafana[f"/etc/grafana/provisioning/{kind}"] == f"./grafana/provisioning/{kind}"
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert grafana[str(Path(home).parent)] == "./grafana/dashboards"
    assert (DEPLOY / "grafana" / "dashboards" / Path(home).name).is_file()


def test_grafana_datasource_points_at_compose_prometheus_with_the_uid_the_dashboard_uses() -> None:
    provisioned = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    (datasource,) = provisioned["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert "9090:9090" in compose()["services"]["prometheus"]["ports"]
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert datasource["jsonData"]["timeInterval"] == scrape["global"]["scrape_interval"]
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": datasource["uid"]}, panel[
            "title"
        ]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"], panel["title"]


def test_the_dashboard_is_grafana_json_with_a_query_on_every_panel() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert isinstance(dashboard["schemaVersion"], int)
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"]
    assert "id" not in dashboard  # provisioned dashboards get their id from Grafana
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel["targets"]:
            variables = set(re.findall(r"\$\w+", target["expr"]))
            assert variables <= GRAFANA_VARIABLES, panel["title"]


def test_the_dashboard_shows_what_operators_watch_with_metrics_the_workers_export() -> None:
    exprs = [t["expr"] for p in panels() for t in p["targets"]]
    used = set().union(*(casewatch_metrics(e) for e in exprs))
    assert used - exported_metric_names() == set()
    watched = {
        "casewatch_exceptions_total",  # exception rate by rule
        "casewatch_open_exceptions",  # open vs capacity
        "casewatch_handler_capacity",
        "casewatch_oldest_open_age_seconds",
        "casewatch_sla_breaches_total",
        "casewatch_detection_latency_seconds_bucket",
        "casewatch_dead_letters_total",
        "casewatch_consumer_lag_messages",
        "casewatch_events_total",  # throughput
        "casewatch_routed_total",
    }
    assert watched - used == set()
    detection = r"histogram_quantile\((0\.\d+), .*casewatch_detection_latency_seconds_bucket"
    quantiles = {q for e in exprs for q in re.findall(detection, e)}
    assert quantiles == {"0.5", "0.99"}
    # per-handler gauges come from the dispatch owner only: max by handler, never a sum
    for expr in exprs:
        for gauge in ("casewatch_open_exceptions", "casewatch_handler_capacity"):
            if gauge in expr:
                assert f"max by (handler) ({gauge})" in expr, expr


def test_kubernetes_objects_share_one_namespace_and_kustomize_lists_every_file() -> None:
    objects = k8s()
    assert set(objects) == {"Namespace", "ConfigMap", "Secret", "Service", "StatefulSet", "Job"}
    namespace = objects["Namespace"]["metadata"]["name"]
    for kind, obj in objects.items():
        if kind != "Namespace":
            assert obj["metadata"]["namespace"] == namespace, kind
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_kubernetes_configmap_holds_the_repos_config_and_it_loads(tmp_path: Path) -> None:
    text = k8s()["ConfigMap"]["data"]["casewatch.yaml"]
    assert text == DEFAULT_CONFIG.read_text(), (
        "deploy/k8s/configmap.yaml differs from pipeline/defaults/casewatch.yaml: copy it over"
    )
    (tmp_path / "casewatch.yaml").write_text(text)
    assert load_config(tmp_path / "casewatch.yaml").pipeline.app_id == "casewatch"


def test_kubernetes_workers_read_the_configmap_secret_and_their_own_state_volume() -> None:
    objects = k8s()
    statefulset, job = objects["StatefulSet"], objects["Job"]
    assert statefulset["spec"]["serviceName"] == objects["Service"]["metadata"]["name"]
    pod = statefulset["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert objects["Service"]["spec"]["selector"].items() <= labels.items()
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    (worker,) = pod["spec"]["containers"]
    assert worker["args"] == ["worker"]
    variables = env(worker)
    assert variables["CASEWATCH_STORE"] == "memory://"
    state = {m["name"]: m["mountPath"] for m in worker["volumeMounts"]}[claim["metadata"]["name"]]
    assert variables["CASEWATCH_STATE_DIR"] == state
    for spec in (pod, job["spec"]["template"]):
        (container,) = spec["spec"]["containers"]
        assert container["image"] == worker["image"]
        config_mount(container, spec["spec"]["volumes"], objects["ConfigMap"])
        assert container["envFrom"] == [
            {"secretRef": {"name": objects["Secret"]["metadata"]["name"]}}
        ]
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["topics"]
    assert "KAFKA_BOOTSTRAP_SERVERS" in objects["Secret"]["stringData"]


def config_mount(
    container: dict[str, Any], volumes: list[dict[str, Any]], configmap: dict[str, Any]
) -> None:
    """CASEWATCH_CONFIG names a key of the ConfigMap, mounted where it says."""
    path = Path(env(container)["CASEWATCH_CONFIG"])
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(path.parent)]
    (volume,) = [v for v in volumes if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert path.name in configmap["data"]


def test_kubernetes_pods_run_as_the_images_user() -> None:
    match = re.search(r"useradd .*--uid (\d+)", (REPO / "Dockerfile").read_text())
    assert match is not None
    uid = int(match.group(1))
    objects = k8s()
    for spec in (objects["StatefulSet"]["spec"]["template"], objects["Job"]["spec"]["template"]):
        assert spec["spec"]["securityContext"]["runAsUser"] == uid
    assert objects["StatefulSet"]["spec"]["template"]["spec"]["securityContext"]["fsGroup"] == uid


def test_the_image_installs_the_locked_runtime_dependencies_and_resolves_nothing() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    lock = "requirements/runtime.txt"
    assert (REPO / lock).is_file()
    assert re.search(rf"^COPY {lock} ", dockerfile, re.MULTILINE)
    installs = [i.split() for i in re.findall(r"pip install ([^\\&\n]+)", dockerfile)]
    assert installs, "the Dockerfile installs nothing"
    assert all("--no-deps" in args for args in installs), installs  # nothing resolved at build
    assert any(f"-r {lock}" in " ".join(args) for args in installs), installs
    assert dockerfile.index(f"COPY {lock}") < dockerfile.index(f"-r {lock}")
