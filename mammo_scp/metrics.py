"""Prometheus metrics of this process, named once.

Counters and histograms move as the process works; the job and delivery gauges
are read from the database at each scrape, so every process reports the
whole site's queue.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

INSTANCES_RECEIVED = Counter(
    "mammo_instances_received", "C-STORE requests answered, by returned status",
    ["status"], registry=REGISTRY)
ASSOCIATIONS = Counter(
    "mammo_associations", "Associations requested of the SCP, by outcome",
    ["outcome"], registry=REGISTRY)
STAGE_SECONDS = Histogram(
    "mammo_stage_duration_seconds", "Duration of each pipeline stage",
    ["stage"], registry=REGISTRY,
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128))
MODEL_SECONDS = Histogram(
    "mammo_model_inference_seconds", "Inference time per image and model",
    ["model"], registry=REGISTRY,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8))
DELIVERIES = Counter(
    "mammo_delivery_attempts", "Delivery attempts, by outcome (delivered, failed, dead)",
    ["outcome"], registry=REGISTRY)
