"""Events (webhooks): changes reported to HTTP endpoints in Distribution's envelope.

The metadata store writes each event with its change (regd.metadata.outbox); here are the
deliverers that drain the outbox, one per configured endpoint and one replica at a time,
and the operators' view of the queues.
"""

from regd.events.delivery import (
    ENVELOPE_MEDIA_TYPE,
    SIGNATURE_HEADER,
    Deliverer,
    envelope,
    routing_for,
    run_events,
    signature,
)
from regd.events.queues import EventsUnknown, drop, retry, status

__all__ = [
    "ENVELOPE_MEDIA_TYPE",
    "SIGNATURE_HEADER",
    "Deliverer",
    "EventsUnknown",
    "drop",
    "envelope",
    "retry",
    "routing_for",
    "run_events",
    "signature",
    "status",
]
