"""Prometheus metrics and JSON logs for the generated device runtime and gateway server.

Self-contained (standard library; ``prometheus-client`` when installed): the runtime generator
copies it verbatim into a bundle's ``runtime/``. Each runtime object owns its own registry, so
several can live in one process. Without ``prometheus-client`` the metrics are no-ops and
:meth:`Metrics.exposition` says how to install it.

Metrics (both tiers): ``inference_latency_seconds`` (histogram of a frame's or request's
latency), ``stage_exit_total{stage}`` (which stage answered), ``offload_rate`` (share of frames
sent to the gateway; on the gateway, the share of requests it admitted). Device only:
``offload_requests_total{outcome}``, ``offload_bytes_total``, ``edgec_drift_psi{signal}``
(population stability index of each watched signal over the last window, see ``drift.py``),
``edgec_drift_alerts_total{signal}`` (times a signal crossed its threshold),
``edgec_capture_frames_total{reason}`` (frames spooled by ``--capture``) and
``edgec_capture_dropped_total`` (spooled frames deleted to keep the caps). Gateway only:
``gateway_requests_total{code}``, ``gateway_queue_depth``, ``gateway_queue_peak`` and
``gateway_inflight``. Device with switchable policies (:meth:`Metrics.define_switching`):
``edgec_policy_switches_total{to}``, ``edgec_policy_active{policy}`` (1 for the current
policy, 0 for the others) and ``edgec_link_rtt_seconds`` (median of the recent probes).

Logs are one JSON object per line with ``ts``, ``level``, ``event`` and the fields of the event
(the device logs ``device_id``, ``model_version``, ``stage`` and ``inference_time_ms`` per frame).
"""

from __future__ import annotations

import json
import logging
import sys
import time

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
)
OFFLOAD_OUTCOMES = ("ok", "timeout", "refused", "error")
DRIFT_SIGNALS = ("confidence", "class", "exit_stage", "offload")
CAPTURE_REASONS = ("low-confidence", "overruled")


class _NullMetric:
    """Stands in for a metric when prometheus-client is not installed."""

    def labels(self, *args, **kwargs) -> _NullMetric:
        return self

    def inc(self, amount: float = 1.0) -> None:
        return None

    def set(self, value: float) -> None:
        return None

    def observe(self, value: float) -> None:
        return None


class Metrics:
    """The metrics of one runtime (``tier`` is ``device`` or ``gateway``)."""

    def __init__(self, tier: str, stage_names: list[str]):
        self.tier = tier
        self.frames = 0
        self.offloaded = 0
        try:
            import prometheus_client as prom
        except ImportError:
            self.registry = None
            self._define(None, tier, stage_names)
            return
        self.registry = prom.CollectorRegistry()
        self._define(prom, tier, stage_names)

    def _define(self, prom, tier: str, stage_names: list[str]) -> None:
        def make(kind: str, name: str, doc: str, labels=(), **extra):
            if prom is None:
                return _NullMetric()
            cls = getattr(prom, kind)
            return cls(name, doc, labelnames=labels, registry=self.registry, **extra)

        self.latency = make(
            "Histogram",
            "inference_latency_seconds",
            f"Latency of one {'frame' if tier == 'device' else 'request'} through the cascade.",
            buckets=LATENCY_BUCKETS,
        )
        self.stage_exit = make("Counter", "stage_exit", "Answers by stage.", ("stage",))
        for name in stage_names:
            self.stage_exit.labels(stage=name)
        self.offload_rate = make(
            "Gauge",
            "offload_rate",
            "Share of frames sent to the gateway."
            if tier == "device"
            else "Share of requests admitted to the queue.",
        )
        if tier == "device":
            self.offload_requests = make(
                "Counter", "offload_requests", "Requests to the gateway by outcome.", ("outcome",)
            )
            for outcome in OFFLOAD_OUTCOMES:
                self.offload_requests.labels(outcome=outcome)
            self.offload_bytes = make(
                "Counter", "offload_bytes", "Bytes sent to the gateway (requests)."
            )
            self._define_field(make)
        else:
            self.requests = make(
                "Counter", "gateway_requests", "Inference requests by HTTP status.", ("code",)
            )
            self.queue_depth = make("Gauge", "gateway_queue_depth", "Requests waiting.")
            self.queue_peak = make("Gauge", "gateway_queue_peak", "Most requests ever waiting.")
            self.inflight = make("Gauge", "gateway_inflight", "Requests being handled.")

    def _define_field(self, make) -> None:
        """The device's drift and capture metrics."""
        self.drift_psi = make(
            "Gauge",
            "edgec_drift_psi",
            "Population stability index of a signal over the last window vs. validation.",
            ("signal",),
        )
        self.drift_alerts = make(
            "Counter",
            "edgec_drift_alerts",
            "Times a signal crossed its drift threshold.",
            ("signal",),
        )
        for signal in DRIFT_SIGNALS:
            self.drift_alerts.labels(signal=signal)
        self.captured = make(
            "Counter", "edgec_capture_frames", "Frames spooled by --capture.", ("reason",)
        )
        for reason in CAPTURE_REASONS:
            self.captured.labels(reason=reason)
        self.capture_dropped = make(
            "Counter", "edgec_capture_dropped", "Spooled frames deleted to keep the caps."
        )

    def record_drift(self, values: dict[str, float], crossed: list[str]) -> None:
        """Set each signal's PSI; count the signals that crossed their threshold."""
        for signal, value in values.items():
            self.drift_psi.labels(signal=signal).set(value)
        for signal in crossed:
            self.drift_alerts.labels(signal=signal).inc()

    def record_capture(self, reason: str, dropped: int) -> None:
        """Count one spooled frame and the old ones deleted for it."""
        self.captured.labels(reason=reason).inc()
        if dropped:
            self.capture_dropped.inc(dropped)

    def record_frame(self, stage: str, seconds: float, offloaded: bool) -> None:
        """Count one answered frame (device) or request (gateway)."""
        self.frames += 1
        self.offloaded += int(offloaded)
        self.latency.observe(seconds)
        self.stage_exit.labels(stage=stage).inc()
        self.offload_rate.set(self.offloaded / self.frames)

    def record_admission(self, admitted: bool) -> None:
        """Count one gateway request, admitted to the queue or refused."""
        self.frames += 1
        self.offloaded += int(admitted)
        self.offload_rate.set(self.offloaded / self.frames)

    def record_answer(self, stage: str, seconds: float) -> None:
        """Count one gateway answer."""
        self.latency.observe(seconds)
        self.stage_exit.labels(stage=stage).inc()

    # --- Policy switching (runtime.switching): its own metrics, defined on demand ---

    def define_switching(self, policies: list[str], current: str) -> None:
        """Add the policy-switching metrics for ``policies``, with ``current`` active."""
        if self.registry is None:
            self.policy_switches = self.policy_active = self.link_rtt = _NullMetric()
            return
        import prometheus_client as prom

        self.policy_switches = prom.Counter(
            "edgec_policy_switches",
            "Policy switches by the policy switched to.",
            labelnames=("to",),
            registry=self.registry,
        )
        self.policy_active = prom.Gauge(
            "edgec_policy_active",
            "1 for the policy in use, 0 for the others.",
            labelnames=("policy",),
            registry=self.registry,
        )
        self.link_rtt = prom.Gauge(
            "edgec_link_rtt_seconds",
            "Median RTT of the recent health probes to the gateway.",
            registry=self.registry,
        )
        for name in policies:
            self.policy_switches.labels(to=name)
            self.policy_active.labels(policy=name).set(float(name == current))
        self._policies = list(policies)

    def record_switch(self, to: str) -> None:
        """Count a switch to ``to`` and make it the active policy."""
        self.policy_switches.labels(to=to).inc()
        for name in getattr(self, "_policies", []):
            self.policy_active.labels(policy=name).set(float(name == to))

    def record_link_rtt(self, rtt_ms: float | None) -> None:
        """The median RTT of the recent probes (``None``: none answered lately)."""
        if rtt_ms is not None:
            self.link_rtt.set(rtt_ms / 1000.0)

    # --- end of policy switching ---

    def exposition(self) -> tuple[int, bytes, str]:
        """HTTP status, body and content type for a ``/metrics`` endpoint."""
        if self.registry is None:
            body = b"metrics need prometheus-client: pip install prometheus-client\n"
            return 501, body, "text/plain; charset=utf-8"
        import prometheus_client as prom

        return 200, prom.generate_latest(self.registry), prom.CONTENT_TYPE_LATEST


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts``, ``level``, ``event`` and the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        """Serialise a record."""
        entry = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        return json.dumps(entry, default=str)


def json_logger(name: str, level: int = logging.INFO, stream=None) -> logging.Logger:
    """A logger that writes JSON lines to ``stream`` (stderr by default), configured once."""
    logger = logging.getLogger(name)
    if not any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level)
    return logger


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields) -> None:
    """Log ``event`` with structured ``fields`` (cheap when the level is off)."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"fields": fields})


def now() -> float:
    """A monotonic clock in seconds (the one every latency here is measured with)."""
    return time.perf_counter()
