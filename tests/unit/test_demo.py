"""`casewatch demo`'s pure parts: why a worker ended, its ports, its folder, the commands it
prints, its signals and the words of its header."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import time
from collections import Counter
from pathlib import Path

import pytest

from pipeline.tools.demo.demo import Demo
from pipeline.tools.demo.procs import (
    cache_dir,
    follow_commands,
    last_words,
    metrics_ports,
    run_folder,
    stopping_on,
)
from pipeline.tools.demo.view import headline, summary

FAUST_CRASH = """\
[2026-11-23 18:00:01,000] [4242] [INFO] [^Worker]: Starting...
Traceback (most recent call last):
  File "/x/pipeline/runtime/metrics.py", line 40, in serve
    start_http_server(port, registry=self.registry)
OSError: [Errno 98] Address already in use
\x1b[32m[2026-11-23 18:00:01,200] [4242] [INFO] [^Worker]: Stopping...\x1b[0m
[2026-11-23 18:00:01,300] [4242] [INFO] [^Worker]: Gathering service tasks...

"""


def test_last_words_is_the_error_not_the_shutdown_chatter() -> None:
    assert last_words(FAUST_CRASH) == "OSError: [Errno 98] Address already in use"


def test_last_words_prefers_our_own_message_and_falls_back_to_the_last_line() -> None:
    ours = "starting\ncasewatch: cannot serve metrics on port 9464 (Address already in use)\n"
    assert last_words(ours).startswith("casewatch: cannot serve metrics on port 9464")
    assert last_words("one\n\x1b[1mtwo\x1b[0m\n\n") == "two"
    assert last_words("") == "its log is empty"


def test_metrics_ports_avoid_a_taken_preferred_port() -> None:
    with socket.socket() as held:
        held.bind(("0.0.0.0", 0))
        held.listen()
        taken = held.getsockname()[1]
        ports = metrics_ports(None, preferred=taken)
        assert taken not in ports
        assert taken + 1 not in ports
        assert len(set(ports)) == 2
        for port in ports:  # both can be listened on
            with socket.socket() as s:
                s.bind(("0.0.0.0", port))
    assert metrics_ports(30000) == [30000, 30001]  # asked for: as asked, taken or not


def test_cache_dir_is_found_as_local_kafka_finds_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASEWATCH_CACHE", "/somewhere/cw")
    assert cache_dir() == Path("/somewhere/cw")
    monkeypatch.delenv("CASEWATCH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
    assert cache_dir() == Path("/xdg/casewatch")


def test_the_demo_keeps_its_files_under_casewatch_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CASEWATCH_CACHE", str(tmp_path))
    args = argparse.Namespace(seed=7, state_dir=None, metrics_port=None, rate=20, duration=0)
    demo = Demo(args)
    assert demo.folder.parent == tmp_path / "demo"
    assert demo.config_path == tmp_path / "demo" / demo.id / "casewatch.yaml"
    assert demo.prefix == f"{demo.id}."


def test_two_runs_in_one_second_get_two_folders(tmp_path: Path) -> None:
    first, second = run_folder(tmp_path), run_folder(tmp_path)
    assert first[0] != second[0]
    assert first[1].is_dir()
    assert second[1].is_dir()


def test_follow_commands_name_the_demo_config_and_its_broker() -> None:
    config = Path("/c/demo1/casewatch.yaml")
    assert follow_commands(config, "127.0.0.1:9092", "logistics") == [
        "casewatch handle logistics --config /c/demo1/casewatch.yaml",
        "casewatch report --config /c/demo1/casewatch.yaml",
    ]
    other = follow_commands(config, "127.0.0.1:23000", "vip")
    assert all(c.startswith("KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:23000 casewatch ") for c in other)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_each_signal_interrupts_as_ctrl_c_does(sig: signal.Signals) -> None:
    before = signal.getsignal(sig)
    with stopping_on() as caught, pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), sig)  # the handler runs before this returns
    assert caught == [sig.name]
    assert signal.getsignal(sig) is before


def test_signals_while_stopping_are_noted_not_raised() -> None:
    with stopping_on(interrupt=False) as caught:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
    assert caught == ["SIGTERM", "SIGINT"]


class _Shown:
    bootstrap = "127.0.0.1:9092"
    ports = [9464, 9465]
    config = None
    commands = ["casewatch handle logistics --config c.yaml"]
    page = "http://127.0.0.1:6066/cases/customer/ana-1 (sign in with the staff token t)"
    began = time.monotonic()
    sent = 500
    found = {f"x{i}" for i in range(29)}
    by_status = Counter({"open": 29, "resolved": 19, "escalated": 2})
    routed = Counter({"normal": 20, "overflow": 9})
    recent = None


def test_the_header_says_found_ever_and_open_now_as_the_queues_show() -> None:
    metrics = {
        "casewatch_open_exceptions": {("handler=logistics",): 6.0, ("handler=vip",): 4.0},
        "casewatch_events_total": {(): 480.0},
    }
    head = headline(_Shown(), metrics)  # type: ignore[arg-type]
    assert "exceptions found: 29, open now: 10, resolved: 19, escalated: 2" in head
    assert "29 open" not in head
    assert "casewatch handle logistics --config c.yaml" in head
    assert "CSR page: http://127.0.0.1:6066/cases/customer/ana-1" in head
    line = summary(_Shown(), 10)  # type: ignore[arg-type]
    assert "exceptions found=29, open_now=10, resolved=19, escalated=2" in line
