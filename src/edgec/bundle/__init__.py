"""Bundles after they are written: manifest I/O, trust (sign/verify), install, the gate, launch.

Public API: :func:`~edgec.bundle.io.read_manifest`; :func:`~edgec.bundle.gate.check_bundle`
(``edgec check``); :mod:`edgec.bundle.trust` (``edgec keygen/sign/verify``);
:mod:`edgec.bundle.install` (``edgec install``); :mod:`edgec.bundle.launch` (``edgec run`` and
``edgec serve``); for fleets, :mod:`edgec.bundle.registry` (``edgec serve --tier registry``)
and :mod:`edgec.bundle.rollout` (``edgec rollout``). Nothing here compiles, and nothing here is
imported eagerly: ``edgec verify`` and ``edgec install`` must not pay for onnx at start.
"""
