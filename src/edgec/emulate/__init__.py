"""An emulated ARM device: a bundle's own device runtime under ``qemu-aarch64``.

:mod:`edgec.emulate.run` runs it (``edgec run --emulate``); :mod:`edgec.emulate.sysroot`
fetches, once, the Debian arm64 Python and the aarch64 wheels it runs on;
:mod:`edgec.emulate.debian` reads Debian's package index and unpacks ``.deb`` files without
dpkg or root. None of it is part of the generated runtime.
"""
