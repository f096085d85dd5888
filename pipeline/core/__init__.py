"""The core: what Casewatch decides, with no Faust and no Kafka in it.

The contract's models (`models`), decoding and checking an input record (`ingest`), the rules
file compiled into detectors (`rules`), the per-customer engine and its stored state (`engine`,
`state`), the event-time clocks (`clock`), and the `Processor` (`processor`): one partition's
raw records in, outputs and state changes out, called alike by the live worker
(pipeline/runtime/) and the offline replay (pipeline/tools/replay.py). The core may import
pipeline.detectors and pipeline.config (data) and nothing above them: never faust, mode,
aiokafka, pipeline.routers, pipeline.sinks, pipeline.runtime or pipeline.tools
(tests/unit/test_layout.py checks the Faust and Kafka part).
"""
