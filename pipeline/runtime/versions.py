"""The releases of the libraries whose internals the worker patches, and the check at its start.

pipeline/runtime/offsets.py and pipeline/runtime/durable.py replace private methods of
faust-streaming, mode and aiokafka, and durable.py's `_drain_messages` is a copy of
faust-streaming's: another release of any of them can undo a fix or break the worker without an
error. So the worker runs only on the releases its tests ran on. pyproject.toml pins the same
versions and the lock files in requirements/ hold them; tests/unit/test_versions.py fails until all
three agree.
"""

from __future__ import annotations

from importlib import metadata

TESTED: dict[str, str] = {
    "faust-streaming": "0.15.3",
    "mode-streaming": "0.7.1",
    "aiokafka": "0.14.0",
}


def installed(distribution: str) -> str | None:
    """The installed version of a distribution, None if it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def untested() -> str | None:
    """One line naming what is installed, what the worker is tested with and the fix; None when
    the installed versions are the tested ones."""
    found = {name: installed(name) for name in TESTED}
    wrong = [
        f"{name} {version}" if version else f"no {name}"
        for name, version in found.items()
        if version != TESTED[name]
    ]
    if not wrong:
        return None
    tested = ", ".join(f"{name} {version}" for name, version in TESTED.items())
    return (
        f"{' and '.join(wrong)} {'is' if len(wrong) == 1 else 'are'} installed; Casewatch's "
        f"worker is tested with {tested} (it patches their internals): install from the lock "
        "files: make setup, or pip install --no-deps -r requirements/runtime.txt"
    )
