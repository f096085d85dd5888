"""Deploy files are for users with Docker (none runs here): checked structurally."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_compose_services_reference_files_that_exist_and_agree_on_ports() -> None:
    compose_file = REPO / "deploy" / "docker-compose.yml"
    compose = yaml.safe_load(compose_file.read_text())
    services = compose["services"]
    assert set(services) == {"kafka", "topics", "worker"}
    assert services["kafka"]["image"] == "apache/kafka:4.1.1"
    for name in ("topics", "worker"):
        svc = services[name]
        build = svc["build"]
        assert (compose_file.parent / build["context"] / build["dockerfile"]).is_file()
        assert svc["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        for volume in svc["volumes"]:
            source = volume.split(":")[0]
            if source.startswith(".."):
                assert (compose_file.parent / source).is_file(), f"{name}: {source} does not exist"
    assert "INTERNAL://kafka:9092" in services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    worker = services["worker"]
    assert worker["ports"] == [f"{worker['environment']['CASEWATCH_METRICS_PORT']}:9464"]
    assert set(compose["volumes"]) == {
        v.split(":")[0] for v in worker["volumes"] if not v.startswith("..")
    }
