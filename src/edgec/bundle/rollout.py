"""Releases of a zoo: which version each device gets, the canary share, promote and rollback.

A zoo (``edgec compile MODEL --target a,b,c -o ZOO``, :mod:`edgec.compiler.zoo`) holds the
newest compile: one bundle per target and ``index.json``. What devices are served is kept
apart from it, so that recompiling the zoo changes nothing for them until a rollout::

    ZOO/
      index.json, <target>/...          the newest compile (a recompile with --force keeps
                                        everything below)
      releases.json                     {current, previous, canary: {version, percent}}
      releases/<version>.json           one released version: per target its manifest sha256,
                                        archive sha256, signature and target summary
      archives/<sha256>.tar.gz          bundle archives, named by their own sha256
      reports.jsonl                     SLO reports from devices, one JSON object a line

A version is named by the sha256 of its targets' manifest hashes (16 hex digits), so the same
compile always publishes the same version. Publishing a version snapshots the zoo's bundles
into archives (verified against their manifests first); later recompiles do not touch them.

A device is in the canary when ``int(sha256(device_id)[:8 bytes]) % 10000 < 100 * percent``:
stable per id, independent of the version, and a device in a 5% canary stays in a 10% one.
A device that sends no id is never in the canary. ``releases.json`` is replaced atomically
under a lock, and the registry reads it on every request, so a rollout takes effect at once.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from edgec.bundle import io as bundle_io
from edgec.bundle import trust
from edgec.errors import BadInputError
from edgec.runtime.verify_bundle import manifest_digest

INDEX = "index.json"
RELEASES = "releases.json"
RELEASE_DIR = "releases"
ARCHIVES = "archives"
REPORTS = "reports.jsonl"
LOCK = ".releases.lock"
# What a recompile of the zoo (--force) carries over: the registry's own state.
REGISTRY_STATE = (RELEASES, RELEASE_DIR, ARCHIVES, REPORTS)
INDEX_SCHEMA = "edgec-zoo/1"
RELEASES_SCHEMA = "edgec-releases/1"
BUCKETS = 10_000


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Canary:
    """A version published to a share of the devices.

    Attributes:
        version: The version the canary devices get.
        percent: The share, in (0, 100].
    """

    version: str
    percent: float


@dataclass(frozen=True)
class ReleaseState:
    """``releases.json``: what the devices get.

    Attributes:
        current: The version every device outside the canary gets (``None``: nothing released).
        previous: The version ``current`` replaced, for ``--rollback``.
        canary: The running canary, if any.
        updated: When the state last changed (UTC).
    """

    current: str | None = None
    previous: str | None = None
    canary: Canary | None = None
    updated: str | None = None

    def assign(self, device_id: str | None) -> tuple[str, str]:
        """The version a device gets and why: ``(version, "canary" | "current")``."""
        if self.canary and in_canary(device_id, self.canary.percent):
            return self.canary.version, "canary"
        return self.current, "current"

    def to_json(self) -> dict:
        """The file's form."""
        return {
            "current": self.current,
            "previous": self.previous,
            "canary": dataclasses.asdict(self.canary) if self.canary else None,
            "updated": self.updated,
        }


@dataclass(frozen=True)
class ReleasedBundle:
    """One target's bundle in a released version.

    Attributes:
        manifest_sha256: The bundle's version id (sha256 of ``manifest.json``).
        archive_sha256: The archive's sha256 (its name under ``archives/``).
        archive_bytes: The archive's size.
        signature: ``manifest.sig`` in base64, or ``None`` when unsigned.
        target: The target summary from the zoo's index (``arch``, ``accelerator``, ``ram_gb``).
    """

    manifest_sha256: str
    archive_sha256: str
    archive_bytes: int
    signature: str | None
    target: dict


def bucket(device_id: str) -> int:
    """The device's canary bucket in ``[0, 10000)``: sha256 of the id, first 8 bytes, mod."""
    digest = hashlib.sha256(device_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def in_canary(device_id: str | None, percent: float) -> bool:
    """Whether ``device_id`` falls in the first ``percent`` % of buckets (no id: never)."""
    return device_id is not None and bucket(device_id) < 100 * percent


def read_index(zoo: Path) -> dict:
    """The zoo's ``index.json``.

    Raises:
        BadInputError: ``zoo`` is not a zoo directory or its index is unreadable.
    """
    path = Path(zoo) / INDEX
    if not Path(zoo).is_dir() or not path.is_file():
        raise BadInputError(
            f"{zoo} is not a zoo: it has no {INDEX}; build one with `edgec compile MODEL "
            "--target a,b -o DIR`."
        )
    data = _read_json(path)
    if not isinstance(data, dict) or data.get("schema") != INDEX_SCHEMA or not data.get("targets"):
        raise BadInputError(f"{path} is not an edgec zoo index (schema {INDEX_SCHEMA}).")
    return data


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        raise BadInputError(f"{path} is not readable JSON.") from None


def _write_json(path: Path, data: dict) -> None:
    trust.write_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(), 0o644)


@contextlib.contextmanager
def locked(zoo: Path) -> Iterator[None]:
    """Serialise writers of the zoo's release state (rollout commands and the registry)."""
    with open(Path(zoo) / LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_state(zoo: Path) -> ReleaseState:
    """``releases.json`` (an empty state when nothing was released yet).

    Raises:
        BadInputError: The file is not a releases file.
    """
    path = Path(zoo) / RELEASES
    if not path.is_file():
        return ReleaseState()
    data = _read_json(path)
    try:
        if not isinstance(data, dict) or data.get("schema") != RELEASES_SCHEMA:
            raise TypeError
        canary = Canary(**data["canary"]) if data.get("canary") else None
        return ReleaseState(data["current"], data.get("previous"), canary, data.get("updated"))
    except (TypeError, KeyError):
        raise BadInputError(
            f"{path} is not an edgec releases file (schema {RELEASES_SCHEMA})."
        ) from None


def read_release(zoo: Path, version: str) -> dict[str, ReleasedBundle]:
    """A released version's bundles by target name (``releases/<version>.json``).

    Raises:
        BadInputError: The record is missing or unreadable.
    """
    path = Path(zoo) / RELEASE_DIR / f"{version}.json"
    if not path.is_file():
        raise BadInputError(f"{path} is missing: version {version} cannot be served.")
    data = _read_json(path)
    try:
        return {name: ReleasedBundle(**entry) for name, entry in data["targets"].items()}
    except (TypeError, KeyError, AttributeError):
        raise BadInputError(f"{path} is not an edgec release record.") from None


def version_of(index: dict) -> str:
    """The version name of a zoo index: its targets' manifest hashes, hashed."""
    pins = {name: entry["manifest_sha256"] for name, entry in index["targets"].items()}
    return hashlib.sha256(json.dumps(pins, sort_keys=True).encode()).hexdigest()[:16]


def publish(zoo: Path) -> str:
    """Snapshot the zoo's bundles as a released version (archives and record); its name.

    Idempotent: a version already published is left as it is.

    Raises:
        BadInputError: No zoo here, or a bundle no longer matches its manifest.
    """
    zoo = Path(zoo)
    index = read_index(zoo)
    version = version_of(index)
    record_path = zoo / RELEASE_DIR / f"{version}.json"
    if record_path.is_file():
        return version
    (zoo / ARCHIVES).mkdir(exist_ok=True)
    (zoo / RELEASE_DIR).mkdir(exist_ok=True)
    for entry in index["targets"].values():  # all first: a refusal writes nothing
        bundle = zoo / entry["bundle"]
        result = trust.verify_bundle(bundle)  # the files still match the manifest
        if not result.valid or manifest_digest(bundle) != entry["manifest_sha256"]:
            problems = "; ".join(result.problems) or "another manifest"
            raise BadInputError(
                f"Bundle {bundle} no longer matches the zoo's index ({problems}); recompile the "
                "zoo."
            )
    targets = {}
    for name, entry in sorted(index["targets"].items()):
        bundle = zoo / entry["bundle"]
        digest, size = _snapshot_archive(zoo, bundle)
        released = ReleasedBundle(
            entry["manifest_sha256"], digest, size, _signature(bundle), entry["target"]
        )
        targets[name] = dataclasses.asdict(released)
    record = {
        "version": version,
        "created": utc_now(),
        "model": index.get("model"),
        "targets": targets,
    }
    _write_json(record_path, record)  # last: a record exists only with all its archives
    return version


def _snapshot_archive(zoo: Path, bundle: Path) -> tuple[str, int]:
    """Write the bundle's reproducible archive into ``archives/<sha256>.tar.gz``; its sha256
    and size."""
    beside = bundle.with_name(bundle.name + ".tar.gz")
    had_archive = beside.exists()  # the user's own (--archive): left in place
    path = bundle_io.write_archive(bundle)
    digest = bundle_io.sha256_file(path)
    stored = zoo / ARCHIVES / f"{digest}.tar.gz"
    size = path.stat().st_size
    if had_archive:
        if not stored.exists():
            trust.write_atomic(stored, path.read_bytes(), 0o644)
    elif stored.exists():
        path.unlink()
    else:
        os.replace(path, stored)
    return digest, size


def _signature(bundle: Path) -> str | None:
    """The bundle's detached signature, base64, or ``None`` when unsigned."""
    path = bundle / bundle_io.SIGNATURE
    return base64.b64encode(path.read_bytes()).decode() if path.is_file() else None


def _save_state(zoo: Path, state: ReleaseState) -> ReleaseState:
    state = dataclasses.replace(state, updated=utc_now())
    _write_json(Path(zoo) / RELEASES, {"schema": RELEASES_SCHEMA, **state.to_json()})
    return state


def ensure_released(zoo: Path) -> ReleaseState:
    """The release state, after releasing the zoo's version to every device if nothing was
    released yet (what the registry does when it starts on a fresh zoo)."""
    with locked(zoo):
        state = read_state(zoo)
        if state.current is None:
            state = _save_state(zoo, dataclasses.replace(state, current=publish(zoo)))
        return state


def start_canary(zoo: Path, percent: float) -> ReleaseState:
    """Publish the zoo's version to the devices in the first ``percent`` % of buckets.

    Raises:
        BadInputError: ``percent`` outside (0, 100], nothing released yet, or the zoo's
            version is already current.
    """
    if not 0 < percent <= 100:
        raise BadInputError(f"--canary is a percentage in (0, 100], got {percent:g}.")
    with locked(zoo):
        state = read_state(zoo)
        if state.current is None:
            raise BadInputError(
                f"{zoo} has no released version yet, so there is nothing to keep the other "
                f"devices on; release the first one to every device with `edgec rollout {zoo} "
                "--promote`."
            )
        version = publish(zoo)
        if version == state.current:
            raise BadInputError(
                f"The zoo's version {version} is already current everywhere; recompile the zoo "
                "(with --force) to canary a new one."
            )
        return _save_state(zoo, dataclasses.replace(state, canary=Canary(version, percent)))


def promote(zoo: Path) -> ReleaseState:
    """Make the canary current for every device; without a canary, release the zoo's version
    to every device. The version replaced becomes ``previous``.

    Raises:
        BadInputError: No canary and the zoo's version is already current.
    """
    with locked(zoo):
        state = read_state(zoo)
        if state.canary:
            version = state.canary.version
        else:
            version = publish(zoo)
            if version == state.current:
                raise BadInputError(
                    f"Nothing to promote: no canary is running and the zoo's version {version} "
                    "is already current."
                )
        return _save_state(zoo, ReleaseState(current=version, previous=state.current))


def rollback(zoo: Path) -> ReleaseState:
    """Restore the previous version everywhere: end a running canary (its devices go back to
    ``current``), or else swap ``current`` and ``previous`` (as ``edgec install --rollback``).

    Raises:
        BadInputError: No canary and no previous version.
    """
    with locked(zoo):
        state = read_state(zoo)
        if state.canary:
            return _save_state(zoo, dataclasses.replace(state, canary=None))
        if state.previous is None:
            raise BadInputError(
                f"Nothing to roll back to: {zoo} runs no canary and has no previous version."
            )
        return _save_state(zoo, ReleaseState(current=state.previous, previous=state.current))


def append_report(zoo: Path, report: dict) -> None:
    """Add one device report to ``reports.jsonl`` (one ``write`` under the lock)."""
    line = json.dumps(report, sort_keys=True) + "\n"
    with locked(zoo), open(Path(zoo) / REPORTS, "a") as handle:
        handle.write(line)


def read_reports(zoo: Path) -> list[dict]:
    """Every report, oldest first (a torn last line, from a crash, is skipped)."""
    path = Path(zoo) / REPORTS
    if not path.is_file():
        return []
    reports = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            item = json.loads(line)
            if isinstance(item, dict):
                reports.append(item)
    return reports


def status(zoo: Path) -> dict:
    """The release state and, per version, a summary of its devices' latest reports."""
    read_index(zoo)
    state = read_state(zoo)
    latest: dict[tuple[str, str], dict] = {}
    for report in read_reports(zoo):  # the latest report per (version, device)
        latest[(report.get("version"), report.get("device_id"))] = report
    versions: dict[str, list[dict]] = {}
    for (version, _), report in latest.items():
        versions.setdefault(version, []).append(report)
    return {
        **state.to_json(),
        "versions": {v: _summary(reports) for v, reports in sorted(versions.items())},
    }


def _summary(reports: list[dict]) -> dict:
    p99 = [r["p99_ms"] for r in reports if r.get("p99_ms") is not None]
    within = [r["within_budget"] for r in reports if r.get("within_budget") is not None]
    drift = [r["drift_psi"] for r in reports if r.get("drift_psi") is not None]
    return {
        "devices": len(reports),
        "p99_ms_median": statistics.median(p99) if p99 else None,
        "p99_ms_max": max(p99) if p99 else None,
        "within_budget_mean": statistics.fmean(within) if within else None,
        "within_budget_min": min(within) if within else None,
        "drift_psi_max": max(drift) if drift else None,
        "last_report": max(r.get("received", 0) for r in reports),
    }


def report_time() -> float:
    """Seconds since the epoch, for a report's ``received``."""
    return round(time.time(), 3)
