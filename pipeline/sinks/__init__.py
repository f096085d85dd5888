"""Where records go: Kafka topics (handler topics, exceptions, dead letters) or memory."""

from pipeline.sinks.base import Sink
from pipeline.sinks.memory import MemorySink, SentRecord

__all__ = ["MemorySink", "SentRecord", "Sink"]
