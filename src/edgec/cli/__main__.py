"""``python -m edgec.cli``: the same CLI as ``python -m edgec`` and the ``edgec`` script."""

from __future__ import annotations

from edgec.cli import main

if __name__ == "__main__":
    main()
