"""Shared fixtures of the deploy tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def service_metrics() -> set[str]:
    """Every series name the three services can expose (counters with _total, histograms
    with _bucket/_sum/_count), read from their real metric classes, not from a list."""
    from prometheus_client import CollectorRegistry

    from boardlens.services.evaluator import EvaluatorMetrics
    from boardlens.services.producer import ProducerMetrics
    from boardlens.services.telemetry import Telemetry
    from boardlens.services.trainer import TrainerMetrics

    names: set[str] = set()
    for service, metrics in (("producer", ProducerMetrics), ("trainer", TrainerMetrics),
                             ("evaluator", EvaluatorMetrics)):
        tel = Telemetry(service, port=0)  # no HTTP server
        metrics(tel)
        registry: CollectorRegistry = tel.registry
        for fam in registry.collect():
            suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(fam.type, ("",))
            names.update(fam.name + s for s in suffixes)
    return names

