"""The runtime: where Faust and Kafka live, and only here.

The Faust app and its agents (`app`), the App subclass with held table writes (`durable`),
the worker consumer's fetch loop and acknowledgements (`offsets`), the live worker around the
core's `Processor` (`worker`), topics (`topics`), Kafka security settings and the access
check (`security`, `access`), Prometheus metrics (`metrics`) and the pinned versions of
faust-streaming, mode and aiokafka whose internals `offsets` and `durable` patch (`versions`).
The runtime may import pipeline.routers, pipeline.sinks, pipeline.core, pipeline.detectors and
pipeline.config; never pipeline.tools (tests/unit/test_layout.py checks it).
"""
