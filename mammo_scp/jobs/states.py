"""Job and delivery states, and which job transitions are allowed."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"            # ready, waiting for a worker
    RUNNING = "running"          # a worker holds its lease and runs the pipeline
    DELIVERING = "delivering"    # results written, deliveries in progress
    DONE = "done"                # every result delivered (or nothing to deliver)
    SKIPPED = "skipped"          # nothing in the job could be processed (reasons per instance)
    FAILED = "failed"            # the pipeline failed; `jobs retry` re-queues it
    DEAD_LETTER = "dead_letter"  # a delivery ran out of attempts; `jobs retry` re-sends


ALLOWED_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING}),
    JobState.RUNNING: frozenset(
        {JobState.DELIVERING, JobState.DONE, JobState.SKIPPED, JobState.FAILED, JobState.QUEUED}
    ),
    JobState.DELIVERING: frozenset({JobState.DONE, JobState.DEAD_LETTER}),
    JobState.FAILED: frozenset({JobState.QUEUED}),
    JobState.DEAD_LETTER: frozenset({JobState.DELIVERING}),
    JobState.DONE: frozenset({JobState.QUEUED}),
    JobState.SKIPPED: frozenset({JobState.QUEUED}),
}

FINAL_STATES = frozenset({JobState.DONE, JobState.SKIPPED, JobState.FAILED, JobState.DEAD_LETTER})


class DeliveryState(StrEnum):
    PENDING = "pending"      # waiting for its next attempt (next_attempt_at)
    SENDING = "sending"      # a worker holds it
    DELIVERED = "delivered"  # the destination answered Success (or Warning)
    DEAD = "dead"            # out of attempts; visible in `jobs list`, `jobs retry` re-sends


class CommitmentState(StrEnum):
    """Storage Commitment of one delivered object (destinations with storage_commitment)."""

    REQUESTED = "requested"  # N-ACTION accepted; waiting for the N-EVENT-REPORT
    COMMITTED = "committed"  # the destination took responsibility for the object
    FAILED = "failed"        # the destination reported it could not commit the object


class InstanceStatus(StrEnum):
    RECEIVED = "received"
    PROCESSED = "processed"
    SKIPPED = "skipped"


class CompletionTrigger(StrEnum):
    FOUR_VIEWS = "four_views"
    QUIET_PERIOD = "quiet_period"
