"""`casewatch status CUSTOMER_ID` and `casewatch status --case ID`: a customer's cases, or one
case, as the case API serves them (docs/cases.md).

Asks any worker's API (`--url`, or CASEWATCH_API_URL; default http://127.0.0.1:6066) with the
token in CASEWATCH_TOKEN; the worker passes the request on to the one that owns the customer.
Prints the cases as text, or the API's JSON with `--json`.

Exit codes: 0 answered (a customer with no cases too); 1 not found, or no worker could answer;
2 a usage or token problem (malformed id, no token, a token of the wrong scope).
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import orjson

DEFAULT_URL = "http://127.0.0.1:6066"
TIMEOUT = 10.0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `casewatch status`."""
    p = sub.add_parser(
        "status",
        help="a customer's cases (or one case) from the workers' case API",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("customer", nargs="?", metavar="CUSTOMER_ID", help="the customer's id")
    p.add_argument("--case", metavar="ID", help="one case by its exception id instead")
    p.add_argument("--status", choices=("open", "escalated", "resolved"), help="only these")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    p.add_argument("--url", default=None, help=f"a worker's API (default: {DEFAULT_URL})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """`casewatch status`; returns the exit code (module docstring)."""
    if bool(args.customer) == bool(args.case):
        return _fail("give a CUSTOMER_ID or --case ID (one of them)", 2)
    base = (args.url or os.environ.get("CASEWATCH_API_URL") or DEFAULT_URL).rstrip("/")
    if args.case:
        path = f"/v1/cases/{quote(args.case, safe='')}"
    else:
        path = f"/v1/customers/{quote(args.customer, safe='')}/cases"
        if args.status:
            path += f"?status={args.status}"
    token = os.environ.get("CASEWATCH_TOKEN", "")
    if not token:
        return _fail("set CASEWATCH_TOKEN to a staff or customer token of the workers", 2)
    request = urllib.request.Request(
        base + path, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        return _http_error(exc)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return _fail(
            f"cannot reach the case API at {base} ({reason}): start a worker, or set --url or "
            "CASEWATCH_API_URL to a worker's API",
            1,
        )
    data = orjson.loads(body)
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    if args.case:
        print("\n".join(_case(data)))
        return 0
    cases = data.get("cases", [])
    if not cases:
        print(f"{data.get('customer_id')}: no cases")
        return 0
    print(f"{data.get('customer_id')}: {len(cases)} case(s)")
    for case in cases:
        print()
        print("\n".join(_case(case)))
    return 0


def _http_error(exc: urllib.error.HTTPError) -> int:
    try:
        message = orjson.loads(exc.read()).get("message", exc.reason)
    except (orjson.JSONDecodeError, AttributeError):
        message = exc.reason
    if exc.code == 503:
        retry = exc.headers.get("Retry-After", "a few")
        return _fail(f"no worker can answer now ({message}); try again in {retry} s", 1)
    if exc.code == 404:
        return _fail(str(message), 1)
    if exc.code in (400, 401, 403):
        return _fail(f"{message} (HTTP {exc.code})", 2)
    return _fail(f"the case API answered HTTP {exc.code}: {message}", 1)


def _case(case: dict[str, Any]) -> list[str]:
    """A case as a few lines of text, staff or customer view."""
    if "message" in case:  # the customer's view
        lines = [
            f"{case['exception_id']}  {case.get('state_text', case.get('state'))}",
            f"  {case.get('message', '')}",
        ]
        lines += [f"  {_when(step['at'])}  {step['text']}" for step in case.get("timeline", [])]
        return lines
    subject = ", ".join(f"{k}={v}" for k, v in (case.get("subject") or {}).items())
    due = case.get("due")
    clock = "" if not due else f"  due {_when(due)}{' (missed)' if case.get('sla_missed') else ''}"
    lines = [
        f"{case['exception_id']}  {case['status']:<9} {case['rule']} {subject}",
        f"  severity {case.get('severity')}  handler {case.get('handler') or '-'}{clock}",
    ]
    for step in case.get("timeline", []):
        who = step.get("handler") or step.get("by") or ""
        note = f'  "{step["note"]}"' if step.get("note") else ""
        lines.append(
            f"  {_when(step['at'])}  {step['step']:<12} {who}  {step.get('reason') or ''}{note}"
        )
    if case.get("evidence"):
        lines.append(f"  evidence: {', '.join(case['evidence'])}")
    return lines


def _when(text: str) -> str:
    try:
        return datetime.fromisoformat(text).astimezone(UTC).strftime("%Y-%m-%d %H:%M")
    except (TypeError, ValueError):
        return str(text)


def _fail(message: str, code: int) -> int:
    print(f"casewatch status: {message}", file=sys.stderr)
    return code
