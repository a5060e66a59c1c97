"""What the bridge counts: Prometheus metrics in a registry of its own.

Each running service gets its own :class:`Metrics` (its own ``CollectorRegistry``,
not the process-global one), so two bridges in one test process never collide and
a scrape shows exactly one bridge.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

#: Time-to-reply buckets: a reply is a database round trip, normally a few milliseconds.
REPLY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: (connections open, connections idle, pool maximum)
PoolStats = Callable[[], tuple[int, int, int]]


class Metrics:
    """The bridge's counters, gauges and histogram, in one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.activations = Counter(
            "bridge_activations",
            "Activation requests answered, by outcome code (ok or the error code).",
            ["outcome"],
            registry=r,
        )
        self.reply_seconds = Histogram(
            "bridge_reply_seconds",
            "Time from taking a request off the queue to publishing its reply.",
            buckets=REPLY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "bridge_requests_in_flight", "Requests being processed now.", registry=r
        )
        self.unanswered = Counter(
            "bridge_unanswered_requests",
            "Requests on a topic without a valid client id (recorded, never answered).",
            registry=r,
        )
        self.rate_limited = Counter(
            "bridge_rate_limited_attempts",
            "Attempts refused with 'rate_limited'.",
            registry=r,
        )
        self.guessing_suspected = Counter(
            "bridge_guessing_suspected",
            "Failed activations answered 'rate_limited' because one identifier or model had "
            "too many failures from all client ids (someone is guessing its numbers).",
            ["vendor", "model"],  # registered models only: the store names no others
            registry=r,
        )
        self.db_pool = Gauge(
            "bridge_db_pool_connections",
            "Database pool connections: open, in use (open minus idle) and the maximum.",
            ["state"],
            registry=r,
        )
        self.db_errors = Counter(
            "bridge_db_errors",
            "Times the database could not be reached: requests answered 'unavailable' "
            "and failed readiness checks.",
            registry=r,
        )
        self.broker_reconnects = Counter(
            "bridge_broker_reconnects",
            "Times the broker connection was lost and a reconnect scheduled.",
            registry=r,
        )
        self.handler_errors = Counter(
            "bridge_handler_errors",
            "Requests whose handling raised an unexpected error (a bug or a hung handler): "
            "logged with the traceback, answered 'unavailable', acknowledged.",
            registry=r,
        )
        self.abandoned = Counter(
            "bridge_abandoned_requests",
            "Requests delivered again and again without ever being handled: acknowledged "
            "unanswered and logged, so one message cannot wedge the session.",
            registry=r,
        )
        self.retained_ignored = Counter(
            "bridge_retained_requests_ignored",
            "Requests that arrived with the retain flag (a broker replaying a stored "
            "message): acknowledged, never answered.",
            registry=r,
        )
        self.session_takeovers = Counter(
            "bridge_session_takeovers",
            "Times the broker gave the bridge's session to another connection with its "
            "client id (MQTT 5 reason 0x8E).",
            registry=r,
        )
        self.broker_connected = Gauge(
            "bridge_broker_subscribed", "1 while subscribed to the activation topics.", registry=r
        )

    def answered(self, outcome: str, seconds: float) -> None:
        """Count one reply published with ``outcome`` after ``seconds``."""
        self.activations.labels(outcome).inc()
        self.reply_seconds.observe(seconds)
        if outcome == "rate_limited":
            self.rate_limited.inc()
        elif outcome == "unavailable":
            self.db_errors.inc()

    def guessing(self, vendor: str, model: str) -> None:
        """Count one failure withheld because a model's numbers are being guessed."""
        self.guessing_suspected.labels(vendor, model).inc()

    def watch_pool(self, stats: PoolStats) -> None:
        """Read the pool's figures at scrape time, so they are never stale."""
        self.db_pool.labels("open").set_function(lambda: stats()[0])
        self.db_pool.labels("in_use").set_function(lambda: stats()[0] - stats()[1])
        self.db_pool.labels("max").set_function(lambda: stats()[2])

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)
