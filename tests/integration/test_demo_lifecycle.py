"""`casewatch demo` stops everything it started, whichever way it is stopped, and nothing else;
it says why when it cannot go on. Every process it starts is found by the pids it writes."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.tools.demo.procs import LOCAL_KAFKA, cache_dir
from tests.integration.workers import wait_for
from tests.ports import free_base, free_port

pytestmark = pytest.mark.integration

DEMO = [sys.executable, "-m", "pipeline", "demo", "--duration", "300"]


def _env(**changes: str | None) -> dict[str, str]:
    env = {**os.environ, **{k: v for k, v in changes.items() if v is not None}}
    for name in [k for k, v in changes.items() if v is None]:
        env.pop(name, None)
    return env


def _alive(pid: int) -> bool:
    """Running: a process that exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _pids(runs: Path) -> dict[str, object]:
    files = list(runs.glob("demo*/pids.json"))
    return json.loads(files[0].read_text()) if files else {}


def _metrics_up(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read()
    except OSError:
        return False
    return True


def _wait_up(runs: Path, demo: subprocess.Popen[bytes]) -> dict[str, object]:
    """The demo's pids once both its workers serve /metrics."""

    def up() -> bool:
        assert demo.poll() is None, "the demo exited before its workers were up"
        ports = _pids(runs).get("metrics_ports", [])
        return len(ports) == 2 and all(_metrics_up(p) for p in ports)  # type: ignore[arg-type]

    wait_for("the demo's two workers to serve /metrics", up, timeout=120)
    return _pids(runs)


def _assert_all_gone(pids: dict[str, object], within: float = 30) -> None:
    started = [*pids["workers"], *([pids["broker"]] if pids["broker"] else [])]  # type: ignore[misc]
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and any(_alive(p) for p in started):
        time.sleep(0.2)
    assert not [p for p in started if _alive(p)], f"left running: {started}"


def _broker_running(env: dict[str, str]) -> bool:
    return (
        subprocess.run([str(LOCAL_KAFKA), "status"], env=env, capture_output=True).returncode == 0
    )


@pytest.fixture
def own_cache(tmp_path: Path) -> Path:
    """A CASEWATCH_CACHE of the test's own, sharing the installed Kafka jars (no download)."""
    home = next(cache_dir().glob("kafka-*/.installed"), None)
    if home is None:
        pytest.skip("local-kafka is not installed in the cache: `make test` installs it")
    mine = tmp_path / "cache" / home.parent.name
    mine.mkdir(parents=True)
    (mine / "libs").symlink_to(home.parent / "libs")
    (mine / ".installed").touch()
    return tmp_path / "cache"


def test_sigterm_stops_the_workers_and_leaves_the_broker_it_found_running(
    bootstrap: str, tmp_path: Path
) -> None:
    port = os.environ.get("CASEWATCH_KAFKA_PORT")
    env = _env(KAFKA_BOOTSTRAP_SERVERS=None)
    if bootstrap != f"127.0.0.1:{port}" or not _broker_running(env):
        pytest.skip("the test broker is not local-kafka's (make test starts one that is)")
    demo = subprocess.Popen([*DEMO, "--state-dir", str(tmp_path)], env=env)
    try:
        pids = _wait_up(tmp_path, demo)
        assert pids["broker"] is None  # found running, not started
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(60) == 0
    finally:
        demo.kill()
        demo.wait()
    _assert_all_gone(pids)
    assert _broker_running(env), "the demo stopped a broker it did not start"


def test_closing_its_terminal_sighup_stops_everything(bootstrap: str, tmp_path: Path) -> None:
    main, tty = os.openpty()
    # Wide enough that the header's lines do not wrap: 60 rows, 240 columns.
    fcntl.ioctl(tty, termios.TIOCSWINSZ, struct.pack("HHHH", 60, 240, 0, 0))

    def own_terminal() -> None:  # the demo's session, with the pty as its controlling terminal
        os.setsid()
        fcntl.ioctl(tty, termios.TIOCSCTTY, 0)

    demo = subprocess.Popen(
        [*DEMO, "--state-dir", str(tmp_path)],
        env=_env(KAFKA_BOOTSTRAP_SERVERS=bootstrap, TERM="xterm"),
        stdin=tty,
        stdout=tty,
        stderr=tty,
        preexec_fn=own_terminal,
    )
    os.close(tty)
    reader = os.fdopen(main, "rb", buffering=0)
    try:
        os.set_blocking(main, False)
        pids = _wait_up(tmp_path, demo)
        screen = b""
        for _ in range(10):  # the live view draws what it shows
            time.sleep(0.5)
            screen += reader.read() or b""
        assert b"exceptions found: " in screen
        assert b", open now: " in screen
        reader.close()  # the terminal goes away: the kernel hangs up its session
        assert demo.wait(60) == 0  # stopped cleanly, not killed by the signal
    finally:
        demo.kill()
        demo.wait()
    _assert_all_gone(pids)


def test_ctrl_c_stops_the_broker_the_demo_started(own_cache: Path) -> None:
    port = free_base(0, 1)
    env = _env(KAFKA_BOOTSTRAP_SERVERS=None, CASEWATCH_CACHE=str(own_cache))
    env["CASEWATCH_KAFKA_PORT"] = str(port)
    runs = own_cache / "demo"  # no --state-dir: CASEWATCH_CACHE decides
    demo = subprocess.Popen(DEMO, env=env, start_new_session=True)
    try:
        pids = _wait_up(runs, demo)
        assert pids["broker"], "the demo started no broker of its own"
        assert (runs / next(runs.glob("demo*")).name / "casewatch.yaml").is_file()
        os.killpg(demo.pid, signal.SIGINT)  # as Ctrl-C does: the terminal's foreground group
        assert demo.wait(90) == 0
    finally:
        demo.kill()
        demo.wait()
        subprocess.run([str(LOCAL_KAFKA), "stop", "--purge"], env=env, capture_output=True)
    _assert_all_gone(pids)
    with socket.socket() as s:
        # Nothing listens on its port any more. SO_REUSEADDR: connections the broker closed
        # itself wait out TIME_WAIT on that port, which a new listener may bind over (Linux
        # refuses it only while a socket listens there).
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()


def test_a_worker_that_exits_stops_the_demo_with_its_reason(bootstrap: str, tmp_path: Path) -> None:
    with socket.socket() as held:  # a leftover process on the metrics port
        held.bind(("0.0.0.0", free_port()))
        held.listen()
        port = held.getsockname()[1]
        done = subprocess.run(
            [*DEMO, "--metrics-port", str(port), "--state-dir", str(tmp_path)],
            env=_env(KAFKA_BOOTSTRAP_SERVERS=bootstrap),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("casewatch: demo: worker 1 exited (code 1): "), done.stderr
    assert f"port {port}" in last, last
    assert "Address already in use" in last, last
    assert "Traceback" not in done.stderr
    _assert_all_gone(_pids(tmp_path), within=5)


def test_a_taken_broker_port_is_local_kafkas_one_line(own_cache: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", free_base(0, 1)))
        held.listen()
        port = held.getsockname()[1]
        env = _env(KAFKA_BOOTSTRAP_SERVERS=None, CASEWATCH_CACHE=str(own_cache))
        env["CASEWATCH_KAFKA_PORT"] = str(port)
        done = subprocess.run(DEMO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"local-kafka: port {port} is taken by another process: "
        "choose another with CASEWATCH_KAFKA_PORT"
    )
