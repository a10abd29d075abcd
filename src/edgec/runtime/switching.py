"""Policy switching for the device runtime: the link and the power state pick the policy.

Self-contained (standard library only): the runtime generator copies it verbatim into a
bundle's ``runtime/``. The compiler plans up to four policies (the manifest's ``policy`` and
``policy.alternatives``): ``link-good`` (as planned), ``link-degraded``, ``link-down`` (no
offload) and ``low-power`` (the smallest device stage, then the gateway). The runtime measures
the link and reads the power state between frames, and :class:`Switcher` picks the policy:

* **Link**: every :attr:`Settings.probe_every_frames` frames, or when
  :attr:`Settings.probe_every_s` seconds have passed, whichever comes first, one
  ``GET /healthz`` goes to the gateway on a kept-alive connection (:class:`HealthProbe`, at
  most :attr:`Settings.probe_timeout_s`); its round trip is an RTT sample, a failure (refused,
  timed out, not 200) a failed probe. The probe runs before the frame's clock starts, so it
  never counts against a frame's budget.
* **Hysteresis** (:class:`LinkState`, ``K`` = :attr:`Settings.window`): the link turns
  *degraded* when the median of the last ``K`` samples exceeds :attr:`Settings.degrade_factor`
  times the planned round trip, and *good* again when, after at least ``K`` samples degraded,
  the median of the last ``K`` is below :attr:`Settings.recover_factor` times it (the gap
  between the two lines and the ``K``-sample dwell keep it from flapping; the median keeps a
  lone slow probe from holding it back). It is *down* after :attr:`Settings.down_after` failed
  probes in a row, and leaves *down* after ``K`` answered probes in a row (to *good* if their
  median is below the recovery line, else *degraded*). The planned round trip of a probe is
  what the plan prices a small request at: the link's RTT plus its per-request overhead.
* **Power** (:class:`PowerState`): ``normal`` or ``low``, from a file re-read when it changes
  (``--power-state-file``) or from ``$EDGEC_POWER_STATE``; it takes effect at the next frame.
* **Choice** (:func:`choose`): ``link-down`` when the link is down; else ``low-power`` when
  power is low; else ``link-degraded`` when the link is degraded; else ``link-good``. A policy
  the bundle does not have is skipped in that order, ending at ``link-good``.

So a link change is acted on within ``(K + 1) x probe_every_frames`` frames (``K`` probes,
plus up to one probe interval before the first); ``down`` within
``(down_after + 1) x probe_every_frames`` frames. The offloads' own latencies are measured too
(:meth:`Switcher.observe_offload`) and reported with each switch.
"""

from __future__ import annotations

import http.client
import os
import socket
import statistics
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

LINK_GOOD = "link-good"
LINK_DEGRADED = "link-degraded"
LINK_DOWN = "link-down"
LOW_POWER = "low-power"
POLICIES = (LINK_GOOD, LINK_DEGRADED, LINK_DOWN, LOW_POWER)
POWER_STATES = ("normal", "low")
POWER_STATE_ENV = "EDGEC_POWER_STATE"
HEALTH_PATH = "/healthz"


@dataclass(frozen=True)
class Settings:
    """How the link is measured and how quickly the policy follows it.

    Attributes:
        window: ``K``: RTT samples the decisions look at (and answered probes to leave down).
        degrade_factor: Degraded when the median of the last ``K`` samples exceeds this times
            the planned round trip.
        recover_factor: Good again when, after ``K`` samples degraded, the median of the last
            ``K`` is below this times it.
        down_after: Failed probes in a row that make the link down.
        probe_every_frames: A probe every this many frames...
        probe_every_s: ...or when this many seconds have passed since the last one.
        probe_timeout_s: The longest a probe may take (a slower one is a failed probe).
    """

    window: int = 5
    degrade_factor: float = 2.0
    recover_factor: float = 1.3
    down_after: int = 3
    probe_every_frames: int = 10
    probe_every_s: float = 1.0
    probe_timeout_s: float = 1.0

    @property
    def frames_to_switch(self) -> int:
        """The most frames between a link change and the switch it causes (degraded/good)."""
        return (self.window + 1) * self.probe_every_frames


def probe_timeout_s(planned_rtt_ms: float) -> float:
    """A probe's time limit for a link planned at ``planned_rtt_ms``: 20 RTTs, 0.1 s to 1 s."""
    return min(1.0, max(0.1, 20 * planned_rtt_ms / 1000.0))


class LinkState:
    """The link's state (``good``, ``degraded`` or ``down``) from probe results, with hysteresis.

    Args:
        planned_rtt_ms: The round trip of a probe the ``link-good`` policy was planned for
            (the link's RTT plus the plan's per-request overhead).
        settings: Window, factors and the failures that mean down.
    """

    def __init__(self, planned_rtt_ms: float, settings: Settings | None = None):
        self.planned_rtt_ms = planned_rtt_ms
        self.settings = settings or Settings()
        self.samples: deque[float] = deque(maxlen=self.settings.window)
        self.failures = 0
        self.state = "good"
        self.degraded_for = 0  # samples taken while degraded

    @property
    def median_ms(self) -> float | None:
        """Median of the samples in the window (``None`` before the first)."""
        return statistics.median(self.samples) if self.samples else None

    def observe(self, rtt_ms: float | None) -> str:
        """Take one probe result (``None``: the probe failed); return the state after it."""
        s = self.settings
        if rtt_ms is None:
            self.failures += 1
            if self.failures >= s.down_after and self.state != "down":
                self.state = "down"
                self.samples.clear()  # leaving down needs K fresh answers
            return self.state
        self.failures = 0
        self.samples.append(rtt_ms)
        if len(self.samples) < s.window:
            return self.state
        median = statistics.median(self.samples)
        recovered = median < s.recover_factor * self.planned_rtt_ms
        if self.state == "down":
            self.state = "good" if recovered else "degraded"
        elif self.state == "good":
            if median > s.degrade_factor * self.planned_rtt_ms:
                self.state = "degraded"
        else:
            self.degraded_for += 1
            if recovered and self.degraded_for >= s.window:
                self.state = "good"
        if self.state != "degraded":
            self.degraded_for = 0
        return self.state


def choose(link: str, power: str, available: Iterable[str]) -> str:
    """The policy for a link state and a power state, among those the bundle has."""
    have = set(available)
    if link == "down" and LINK_DOWN in have:
        return LINK_DOWN
    if power == "low" and LOW_POWER in have:
        return LOW_POWER
    if link == "degraded" and LINK_DEGRADED in have:
        return LINK_DEGRADED
    return LINK_GOOD


class PowerState:
    """The device's power state: a file (re-read when it changes) or a fixed value.

    Args:
        path: A file holding ``normal`` or ``low`` (a missing file reads as ``normal``).
        value: The state when there is no file (default ``$EDGEC_POWER_STATE``, else
            ``normal``; the variable is not read when there is a file).

    Raises:
        ValueError: ``value`` is neither ``normal`` nor ``low``.
    """

    def __init__(self, path: str | os.PathLike | None = None, value: str | None = None):
        self.path = os.fspath(path) if path is not None else None
        if value is None and self.path is None:
            value = os.environ.get(POWER_STATE_ENV)
        value = (value or "normal").strip().lower()
        if value not in POWER_STATES:
            raise ValueError(
                f"The power state {value!r} (${POWER_STATE_ENV}) is not one of "
                f"{', '.join(POWER_STATES)}."
            )
        self.state = value if self.path is None else "normal"
        self.problem: str | None = None  # the last unreadable content, reported once
        self._seen: tuple | None = None

    def read(self) -> str:
        """The current state; a file is read again only when its size or mtime changed. A file
        with anything but ``normal`` or ``low`` keeps the previous state and sets ``problem``."""
        if self.path is None:
            return self.state
        try:
            info = os.stat(self.path)
        except OSError:
            self._seen = None
            self.state = "normal"
            return self.state
        seen = (info.st_mtime_ns, info.st_size, info.st_ino)
        if seen == self._seen:
            return self.state
        self._seen = seen
        try:
            with open(self.path, encoding="utf-8") as handle:
                text = handle.read(64).strip().lower()
        except (OSError, UnicodeDecodeError) as err:
            self.problem = f"cannot read {self.path}: {err}"
            return self.state
        if text in POWER_STATES:
            self.state, self.problem = text, None
        else:
            self.problem = f"{self.path} holds {text!r}, not one of {', '.join(POWER_STATES)}"
        return self.state


class HealthProbe:
    """``GET /healthz`` on the gateway over one kept-alive connection; the round trip in ms.

    Raises:
        ValueError: ``url`` is not ``http(s)://HOST[:PORT]``.
    """

    def __init__(self, url: str, timeout_s: float):
        parts = urllib.parse.urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
            raise ValueError(f"The gateway URL {url!r} is not http://HOST[:PORT].")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = port or (443 if self.https else 80)
        self.netloc = parts.netloc
        self.timeout_s = timeout_s
        self._connection: http.client.HTTPConnection | None = None

    def close(self) -> None:
        """Close the connection."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
            self._connection = cls(self.host, self.port, timeout=self.timeout_s)
            self._connection.connect()
            self._connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self._connection

    def probe(self) -> float | None:
        """The round trip of one probe in ms, or ``None`` when it failed or took too long.

        Connecting is not timed (a new connection costs an extra round trip); a kept-alive
        connection the gateway has closed is retried once on a new one.
        """
        for attempt in (1, 2):
            reused = self._connection is not None
            try:
                connection = self._connect()
                started = time.perf_counter()
                connection.request("GET", HEALTH_PATH, headers={"Host": self.netloc})
                response = connection.getresponse()
                response.read()
                elapsed_ms = (time.perf_counter() - started) * 1000.0
            except (OSError, http.client.HTTPException):
                self.close()
                if reused and attempt == 1:
                    continue
                return None
            if response.will_close:
                self.close()
            return elapsed_ms if response.status == 200 else None
        return None


class Switcher:
    """Picks the policy before each frame from probes of the link and the power state.

    Args:
        available: The policies the bundle has (``link-good`` at least).
        planned_rtt_ms: The round trip of a probe the ``link-good`` policy was planned for
            (``None``: the link is not measured).
        probe: Measures the gateway's RTT (``None``: no gateway, the link is not measured).
        power: The power state.
        settings: Window, factors and the probe schedule.
        clock: Seconds, monotonic (tests may pass their own).
    """

    def __init__(
        self,
        available: Iterable[str],
        planned_rtt_ms: float | None,
        probe: HealthProbe | None,
        power: PowerState,
        settings: Settings | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.available = tuple(p for p in POLICIES if p in set(available))
        self.settings = settings or Settings()
        measured = probe is not None and planned_rtt_ms is not None and planned_rtt_ms > 0
        self.probe = probe if measured else None
        self.link = LinkState(planned_rtt_ms or 0.0, self.settings) if measured else None
        self.power = power
        self.clock = clock
        self.current = LINK_GOOD
        self.frames = 0
        self.switches = 0
        self.probed = False  # whether the last step() probed the link
        self.offload_ms: deque[float] = deque(maxlen=self.settings.window)
        self._frames_since_probe = 0
        self._last_probe = clock()

    def close(self) -> None:
        """Close the probe's connection."""
        if self.probe is not None:
            self.probe.close()

    def observe_offload(self, latency_ms: float) -> None:
        """Record the latency of an answered offload (reported with each switch)."""
        self.offload_ms.append(latency_ms)

    def _probe_due(self) -> bool:
        every = self.settings
        return (
            self._frames_since_probe >= every.probe_every_frames
            or self.clock() - self._last_probe >= every.probe_every_s
        )

    def step(self) -> dict | None:
        """Call once before each frame: probe when due, read the power state, and switch.

        Returns:
            The switch event (``from``, ``to``, ``reason``, ``frame``, ``link``, ``power``,
            ``rtt_ms``, ``planned_rtt_ms``, ``offload_ms``) when the policy changed, else
            ``None``.
        """
        self.frames += 1
        self._frames_since_probe += 1
        self.probed = False
        if self.link is not None and self._probe_due():
            self.probed = True
            self._frames_since_probe = 0
            rtt_ms = self.probe.probe()
            self._last_probe = self.clock()
            self.link.observe(rtt_ms)
        link = self.link.state if self.link is not None else "good"
        power = self.power.read()
        wanted = choose(link, power, self.available)
        if wanted == self.current:
            return None
        previous, self.current = self.current, wanted
        self.switches += 1
        median = self.link.median_ms if self.link is not None else None
        return {
            "from": previous,
            "to": wanted,
            "reason": f"link {link}, power {power}",
            "frame": self.frames,
            "link": link,
            "power": power,
            "rtt_ms": round(median, 4) if median is not None else None,
            "planned_rtt_ms": self.link.planned_rtt_ms if self.link is not None else None,
            "offload_ms": round(statistics.median(self.offload_ms), 4) if self.offload_ms else None,
        }
