"""The Faust app as `casewatch worker` builds it, without a broker: what the environment
turns on and off."""

from __future__ import annotations

from pipeline.config import Runtime, load_config
from pipeline.runtime.app import build_app
from pipeline.runtime.metrics import Metrics


def test_no_case_api_when_its_port_is_0() -> None:
    app = build_app(load_config(), Runtime(api_port=0), Metrics.create())
    assert app.conf.web_enabled is False


def test_the_case_api_on_its_port_with_fausts_own_pages_off() -> None:
    app = build_app(load_config(), Runtime(api_port=7070, api_host="w1"), Metrics.create())
    conf = app.conf
    assert (conf.web_enabled, conf.web_port, str(conf.canonical_url)) == (
        True,
        7070,
        "http://w1:7070",
    )
    assert [conf.web_tables_enabled, conf.web_router_enabled, conf.web_stats_enabled] == [
        False,
        False,
        False,
    ]
    routes = {r.resource.canonical for r in app.web.web_app.router.routes()}
    assert "/v1/customers/{customer_id}/cases" in routes
    assert not any(r.startswith("/table") for r in routes)
