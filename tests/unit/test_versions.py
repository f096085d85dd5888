"""The worker starts only on the releases of faust-streaming, mode and aiokafka it is tested with,
and pyproject.toml, the lock files and pipeline/runtime/versions.py name the same ones."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pipeline.cli import main
from pipeline.runtime import versions

REPO = Path(__file__).resolve().parents[2]
LOCKS = {name: REPO / "requirements" / f"{name}.txt" for name in ("runtime", "dev", "bench")}
EXTRAS = {"runtime": [], "dev": ["dev"], "bench": ["dev", "bench"]}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)\s*(?:;\s*([^#]+?))?\s*(?:#.*)?$")


def locked(lock: Path) -> dict[str, str]:
    """{name: version} of a lock file, for this Python and platform (uv's universal locks may
    hold a package twice, under exclusive markers)."""
    pins: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"{lock.name}: not an exact pin: {line!r}"
        name, version, marker = match.groups()
        if marker is None or Marker(marker).evaluate():
            assert canonicalize_name(name) not in pins, f"{lock.name}: {name} twice"
            pins[canonicalize_name(name)] = version
    return pins


def requirements(extras: list[str]) -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + [
        r for extra in extras for r in project["optional-dependencies"][extra]
    ]
    return [Requirement(r) for r in declared]


def untested_installed(monkeypatch: pytest.MonkeyPatch, **wrong: str | None) -> None:
    """Makes the metadata lookup report other versions, e.g. faust_streaming="0.15.4"."""
    real = metadata.version

    def version(name: str) -> str:
        key = name.replace("-", "_")
        if key not in wrong:
            return real(name)
        if (found := wrong[key]) is None:
            raise metadata.PackageNotFoundError(name)
        return found

    monkeypatch.setattr(versions.metadata, "version", version)


def test_the_installed_versions_are_the_tested_ones() -> None:
    assert versions.untested() is None


def test_the_worker_refuses_an_untested_release_in_one_line_and_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    untested_installed(monkeypatch, faust_streaming="0.15.4")
    assert main(["worker"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "casewatch: faust-streaming 0.15.4 is installed; Casewatch's worker is tested with "
        "faust-streaming 0.15.3, mode-streaming 0.7.1, aiokafka 0.14.0 (it patches their "
        "internals): install from the lock files: make setup, or pip install --no-deps -r "
        "requirements/runtime.txt\n"
    )


def test_the_message_names_every_library_that_differs_or_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    untested_installed(monkeypatch, mode_streaming=None, aiokafka="0.13.0")
    message = versions.untested()
    assert message is not None
    assert message.startswith("no mode-streaming and aiokafka 0.13.0 are installed; ")
    assert "\n" not in message


def test_on_the_tested_versions_the_worker_goes_on_to_its_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("pipeline:\n  partitons: 3\n")
    assert main(["worker", "--config", str(bad)]) == 2  # the config error, before any Kafka
    assert "tested with" not in capsys.readouterr().err


@pytest.mark.parametrize("lock", LOCKS)
def test_pyproject_pins_and_every_lock_file_hold_the_tested_versions(lock: str) -> None:
    pinned = {
        canonicalize_name(r.name): str(r.specifier)
        for r in requirements([])
        if canonicalize_name(r.name) in versions.TESTED
    }
    assert pinned == {name: f"=={version}" for name, version in versions.TESTED.items()}
    pins = locked(LOCKS[lock])
    assert {name: pins.get(name) for name in versions.TESTED} == versions.TESTED, (
        f"requirements/{lock}.txt: run `make lock` after changing pyproject.toml"
    )


@pytest.mark.parametrize("lock", LOCKS)
def test_each_lock_file_satisfies_pyproject_toml(lock: str) -> None:
    """A stale lock (pyproject.toml changed, `make lock` not run) fails here, not at install."""
    pins = locked(LOCKS[lock])
    for requirement in requirements(EXTRAS[lock]):
        if requirement.marker and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"requirements/{lock}.txt lacks {requirement}: run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements/{lock}.txt has {name}=={pins[name]}, pyproject.toml wants "
            f"{requirement}: run `make lock`"
        )


def test_the_lock_files_agree_on_every_package_they_share() -> None:
    bench = locked(LOCKS["bench"])
    for lock in ("runtime", "dev"):
        pins = locked(LOCKS[lock])
        assert pins.keys() <= bench.keys()
        assert {name: bench[name] for name in pins} == pins, lock
