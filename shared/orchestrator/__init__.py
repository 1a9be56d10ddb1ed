"""Orchestrator: AI and data pipelines in YAML, on an embedded engine or on AWS Step Functions."""

__version__ = "0.1.0"
