"""Bundles after they are written: manifest I/O, trust (sign/verify), install, the gate, launch.

Public API: :func:`~edgec.bundle.io.read_manifest`; :func:`~edgec.bundle.gate.check_bundle`
(``edgec check``); :mod:`edgec.bundle.trust` (``edgec keygen/sign/verify``);
:mod:`edgec.bundle.install` (``edgec install``); :mod:`edgec.bundle.launch` (``edgec run`` and
``edgec serve``). Nothing here compiles, and nothing here is imported eagerly: ``edgec verify``
and ``edgec install`` must not pay for onnx at start.
"""
