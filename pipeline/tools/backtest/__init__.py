"""`casewatch replay --against`: a rule change backtested. `backtest` is the command, `cases`
replays the same events under both configs and compares the exceptions found, `output` prints
the differences. Imports pipeline.tools.replay (its `Replay`), the core and pipeline.config.
"""
