"""The CSR page of the demo's customer whose modem never arrived, served by a real worker from
its cases table and rendered by Debian's Chromium headless: the screenshot shows the case, its
handler and its timeline. Chromium cannot send a bearer header, so it goes through a small
proxy that adds one, as a single sign-on proxy in front of the workers would.

With CASEWATCH_SCREENSHOT=FILE the screenshot is kept there (the README's picture)."""

from __future__ import annotations

import http.server
import os
import random
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.tools.demo.demo import demo_config
from pipeline.tools.demo.traffic import Traffic
from tests.browser import WINDOW, only, png_top, run_chromium, sections, tree
from tests.integration import scenario
from tests.integration.test_detect import casewatch
from tests.integration.workers import free_port, start_worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.browser]

STAFF = "csr-page-token"


@contextmanager
def signed_in(api: int) -> Iterator[int]:
    """A proxy on a free port that passes GETs to the worker's API with a staff token."""

    class Proxy(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            request = urllib.request.Request(
                f"http://127.0.0.1:{api}{self.path}", headers={"Authorization": f"Bearer {STAFF}"}
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    status, body, kind = response.status, response.read(), response.headers
            except urllib.error.HTTPError as exc:
                status, body, kind = exc.code, exc.read(), exc.headers
            self.send_response(status)
            self.send_header("Content-Type", kind.get("Content-Type", "text/html"))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield int(server.server_address[1])
        server.shutdown()
        thread.join(timeout=10)


def test_the_csr_page_of_the_demos_lost_modem_shows_the_case_its_handler_and_timeline(
    bootstrap: str, unique: str, tmp_path: Path
) -> None:
    config = demo_config(tmp_path / "demo.yaml", f"{unique}.")
    casewatch("topics", "--config", str(config), bootstrap=bootstrap)
    api = free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "CASEWATCH_STORE": "memory://",
        "CASEWATCH_API_PORT": str(api),
        "CASEWATCH_STAFF_TOKENS": STAFF,
    }
    with start_worker(config, env, tmp_path / "worker"):
        # The demo's first round of stories; Ana's modem is shipped and never delivered, and
        # her calls afterwards move the clock past its deadline.
        story = Traffic(random.Random(1)).stories(scenario.now())
        ana = [e for _, e in story if isinstance(e, dict) and e["customer_id"] == "ana-1"]
        events = scenario.write(tmp_path / "ana.jsonl", ana)
        casewatch("produce", str(events), "--config", str(config), bootstrap=bootstrap)

        def missing() -> list[dict[str, Any]]:
            request = urllib.request.Request(
                f"http://127.0.0.1:{api}/v1/customers/ana-1/cases",
                headers={"Authorization": f"Bearer {STAFF}"},
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    cases = orjson.loads(response.read())["cases"]
            except OSError:
                return []
            return [c for c in cases if c["rule"] == "missing_delivery" and c["handler"]]

        wait_for("Ana's missing delivery, routed", lambda: bool(missing()), 90)
        (case,) = missing()
        with signed_in(api) as proxy:
            url = f"http://127.0.0.1:{proxy}/cases/customer/ana-1"
            dom = tree(run_chromium(url, "--dump-dom").stdout.decode())
            shot = tmp_path / "csr-page.png"
            run_chromium(url, f"--screenshot={shot}")
        # The demo's handlers have short SLAs: the case may have moved on while Chromium ran.
        (later,) = missing()
    # The case is on the page, open, with its handler and its timeline as the API has them.
    section = next(s for s in sections(dom) if s.attrs["id"] == f"case-{case['exception_id']}")
    assert "open" in section.classes
    assert "missing_delivery" in section.text()
    assert only(section, "dd", "handler").text() in {case["handler"], later["handler"]}
    steps = [li.text() for li in only(section, "ol", "timeline").find("li")]
    assert 2 <= len(case["timeline"]) <= len(steps) <= len(later["timeline"])
    assert f"routed to {case['timeline'][1]['handler']}" in steps[1]
    assert "o-modem-1" in section.text()
    size, rows = png_top(shot.read_bytes(), 240)
    assert size == WINDOW
    assert len({pixel for row in rows for pixel in row}) > 40  # drawn, not a blank page
    if keep := os.environ.get("CASEWATCH_SCREENSHOT"):
        shutil.copyfile(shot, keep)
