"""`casewatch demo`: a local broker, two workers, realistic traffic with the seed stories,
simulated handler teams and a live view. `demo` is the command, `procs` starts and stops the
processes, `traffic` makes the events, `view` draws the screen. Imports pipeline.config and
aiokafka; it runs the workers as `python -m pipeline` subprocesses, not in process.
"""
