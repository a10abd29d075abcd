"""The INT8 decision: calibration, the accuracy guard and its repair loop, and INT8 diagnosis.

Public API: :func:`~edgec.compiler.int8.precision.decide_precision` (what the driver calls
per stage), :mod:`~edgec.compiler.int8.accuracy_guard` (the guard and the layers it keeps in
FP32), :func:`~edgec.compiler.int8.explain.explain_model_int8` (``edgec inspect --precision
int8``). Backend specifics are asked through the Backend protocol, never named here.
"""
