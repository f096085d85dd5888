"""Casewatch: catches the exceptions in customer operations from Kafka event streams."""

__version__ = "0.1.0"
