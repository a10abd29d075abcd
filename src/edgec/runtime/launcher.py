"""The trust root of an edgec install directory: verify ``current``, then run it.

``edgec install BUNDLE --into DIR`` puts this file, a copy of edgec's ``verify_bundle.py`` and,
with ``--key``, the public key ``edgec.pub`` into ``DIR/trust/``: outside every bundle, so a
bundle cannot vouch for itself. A device without edgec starts its runtime through this file::

    python3 -B DIR/trust/launch.py device frames.npy --json
    python3 -B DIR/trust/launch.py gateway --host 0.0.0.0 --port 8080

It resolves ``DIR/current`` once, verifies that directory with the verifier beside it (against
``$EDGEC_PUBLIC_KEY`` or the pinned ``edgec.pub``; without either, integrity only, with a
warning), and only then imports the bundle's ``runtime/`` package, checking every source file
against the verified manifest as it is read. Nothing of the bundle runs before it verifies.

Exit codes: 1 the bundle does not verify (nothing of it ran), 2 bad usage or no bundle
installed; otherwise the runtime's own.

This file imports only the standard library and its sibling ``verify_bundle.py``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PUBLIC_KEY = "edgec.pub"
PUBLIC_KEY_ENV = "EDGEC_PUBLIC_KEY"
MODULES = ("device", "gateway")
USAGE = f"usage: python3 -B {HERE / 'launch.py'} {{device|gateway}} [runtime arguments...]"


def _load_verifier():
    """``verify_bundle.py`` from this directory, by file name (never from ``sys.path``)."""
    spec = importlib.util.spec_from_file_location(
        "edgec_trust_verify_bundle", HERE / "verify_bundle.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _public_key() -> bytes | None:
    path = os.environ.get(PUBLIC_KEY_ENV) or (
        HERE / PUBLIC_KEY if (HERE / PUBLIC_KEY).is_file() else None
    )
    return Path(path).read_bytes() if path else None


def main(argv: list[str] | None = None) -> int:
    """Verify the installed bundle, then hand ``argv[1:]`` to its device or gateway runtime."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in MODULES:
        print(USAGE, file=sys.stderr)
        return 2
    link = HERE.parent / "current"
    if not link.is_symlink():
        print(f"error: no bundle is installed in {HERE.parent} (no current link).", file=sys.stderr)
        return 2
    root = Path(os.path.realpath(link))  # once: an install switching current cannot mix versions
    verifier = _load_verifier()
    try:
        key = _public_key()
    except OSError as err:
        print(f"error: cannot read the public key: {err.strerror}.", file=sys.stderr)
        return 2
    if key is None:
        print(
            f"warning: no public key ({HERE / PUBLIC_KEY} or ${PUBLIC_KEY_ENV}): only the "
            "bundle's integrity is checked, not who made it.",
            file=sys.stderr,
        )
    sys.dont_write_bytecode = True
    try:
        manifest = verifier.verify_bundle(root, public_key=key)
        package = "edgec_bundle_runtime_" + verifier.manifest_digest(root)[:16]
        module = verifier.import_verified(root, argv[0], package, manifest)
    except verifier.BundleVerificationError as err:
        print(f"error: refusing to run: {err}.", file=sys.stderr)
        return 1
    except ValueError as err:
        print(f"error: the public key is not usable: {err}.", file=sys.stderr)
        return 2
    except ModuleNotFoundError:
        print(f"error: the installed bundle has no {argv[0]} runtime.", file=sys.stderr)
        return 2
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
