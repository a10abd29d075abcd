"""``python -m edgec``: the same CLI as the ``edgec`` console script."""

from __future__ import annotations

from edgec.cli import main

if __name__ == "__main__":
    main()
