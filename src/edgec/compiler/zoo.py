"""A zoo: one model compiled for several targets, one bundle each, with an index.

``edgec compile MODEL --target a,b,c -o ZOO`` lands here. Shared between the targets, done
once: the target list is resolved and checked (unknown or repeated targets refused before any
work), the model is loaded, validated and canonicalised (with ``--time-passes`` /
``--dump-ir`` recorded once). Done per target, by :func:`~edgec.compiler.compile_model`: the
data set (cheap), the students (sized from each target), precision, backend builds, latency,
the cascade policy, the generated runtime, the signature and the gate.

The whole zoo is written into a staging directory next to ``ZOO`` and renamed into place at the
end (like a bundle): a failure for any target leaves nothing behind. Replacing a zoo (``--force``)
keeps its registry state (:data:`~edgec.bundle.rollout.REGISTRY_STATE`: releases, archives,
reports), so devices keep getting the released versions until ``edgec rollout`` says otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from edgec.bundle import io as bundle_io
from edgec.bundle import rollout
from edgec.compiler.driver import CompileResult, compile_model, prepare_model
from edgec.compiler.progress import Reporter
from edgec.config import CompileConfig
from edgec.errors import BadInputError
from edgec.runtime.verify_bundle import manifest_digest
from edgec.targets import Target, load_target


@dataclass(frozen=True)
class ZooResult:
    """What a zoo compile produced.

    Attributes:
        zoo: The zoo directory.
        index: The contents of ``index.json``.
        results: One compile result per target, in the order given (paths inside the zoo).
    """

    zoo: Path
    index: dict
    results: tuple[CompileResult, ...]

    @property
    def gate_failed(self) -> bool:
        """Whether any target's bundle failed its budget."""
        return any(r.gate is not None and not r.gate.passed for r in self.results)

    def to_json(self) -> dict:
        """Machine-readable summary for ``--json``."""
        return {
            "zoo": str(self.zoo),
            "index": self.index,
            "bundles": {r.manifest["target"]["name"]: r.to_json() for r in self.results},
        }


def split_targets(text: str) -> list[str]:
    """The entries of a comma-separated ``--target`` list.

    Raises:
        BadInputError: An empty entry.
    """
    names = [part.strip() for part in text.split(",")]
    if not all(names):
        raise BadInputError(
            f"--target '{text}' has an empty entry; list targets separated by single commas, "
            "e.g. raspberry-pi-4,jetson-nano."
        )
    return names


def resolve_targets(text: str) -> list[tuple[str, Target]]:
    """Resolve every target of the list (as given, resolved); refuse unknown and repeated ones.

    Raises:
        BadInputError: An unknown target, a bad descriptor, or a target named twice.
    """
    targets, seen = [], set()
    for spec in split_targets(text):
        target = load_target(spec)
        if target.name in seen:
            raise BadInputError(
                f"Target '{target.name}' appears twice in --target '{text}'; list each target once."
            )
        seen.add(target.name)
        targets.append((spec, target))
    return targets


def target_entry(target: Target) -> dict:
    """What the index (and the registry's matching) knows about a target."""
    return {
        **target.summary(),
        "description": target.description,
        "arch": target.cpu.arch,
        "accelerator": target.accelerator.kind if target.accelerator else None,
        "ram_gb": target.memory.ram_gb,
    }


def compile_zoo(config: CompileConfig, reporter: Reporter | None = None) -> ZooResult:
    """Compile ``config.model`` for each target of the comma-separated ``config.target`` into
    ``config.output/<target name>/`` and write ``index.json``.

    Raises:
        BadInputError: Bad targets, flags, model, data or output (nothing is written).
    """
    reporter = reporter or Reporter(quiet=True)
    resolved = resolve_targets(config.target)
    if config.device is not None:
        raise BadInputError(
            "--device measures on one device; compile a zoo without it, or compile that "
            "target alone."
        )
    zoo = Path(config.output)
    bundle_io.check_output(zoo, config.force)
    prepared = prepare_model(config, reporter)
    results = []
    with bundle_io.staging_dir(zoo, force=config.force) as root:
        if config.force and zoo.is_dir():
            _carry_registry_state(zoo, root)
        for position, (spec, target) in enumerate(resolved, start=1):
            reporter.note(f"target {target.name} ({position}/{len(resolved)})")
            per_target = dataclasses.replace(
                config, target=spec, output=root / target.name, force=False
            )
            results.append(compile_model(per_target, reporter, prepared=prepared))
        index = _index(root, config, [t for _, t in resolved], prepared.loaded.sha256)
        (root / rollout.INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    moved = tuple(_moved(result, root, zoo.absolute()) for result in results)
    return ZooResult(zoo=zoo, index=index, results=moved)


def _index(root: Path, config: CompileConfig, targets: list[Target], model_sha256: str) -> dict:
    entries = {}
    for target in targets:
        bundle = root / target.name
        entries[target.name] = {
            "bundle": target.name,
            "manifest_sha256": manifest_digest(bundle),
            "target": target_entry(target),
            "signed": (bundle / bundle_io.SIGNATURE).is_file(),
            "created": rollout.utc_now(),
        }
    return {
        "schema": rollout.INDEX_SCHEMA,
        "model": config.model.name,
        "model_sha256": model_sha256,
        "created": rollout.utc_now(),
        "targets": entries,
    }


def _moved(result: CompileResult, staging: Path, final: Path) -> CompileResult:
    """``result`` with its paths pointing into the zoo instead of its staging directory."""

    def move(path: Path | None) -> Path | None:
        return None if path is None else final / Path(path).relative_to(staging)

    return dataclasses.replace(result, bundle=move(result.bundle), archive=move(result.archive))


def _carry_registry_state(old: Path, staging: Path) -> None:
    """Hard-link (or copy) the old zoo's releases, archives and reports into the new one."""
    for name in rollout.REGISTRY_STATE:
        source = old / name
        if source.is_dir():
            shutil.copytree(source, staging / name, copy_function=_link_or_copy)
        elif source.is_file():
            _link_or_copy(source, staging / name)


def _link_or_copy(source, destination) -> None:
    try:
        os.link(source, destination)
    except OSError:  # another filesystem, or links not allowed: copy
        shutil.copy2(source, destination)
