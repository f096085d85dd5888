"""The tools: the commands around the worker, each one a user of the runtime and the core.

`produce` (an events file onto the input topics), `replay` (the core's `Processor` over a file,
offline, no broker), and one subpackage per larger tool: `backtest` (two configs replayed over
the same events, their exceptions compared), `demo` (broker, workers, traffic and a live view),
`handle` (the example handler desk) and `report` (what the exception log says). A tool may
import pipeline.runtime, pipeline.routers, pipeline.sinks, pipeline.core, pipeline.detectors
and pipeline.config; nothing below the tools imports them (tests/unit/test_layout.py checks
the runtime), and a tool does not reach into another tool's internals (backtest builds on
replay's `Replay`, its public entry point).
"""
