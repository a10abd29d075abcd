"""Detection models: the output contract, NMS appended to the stage graph, mAP, the cascade.

Modules: ``contract`` (which outputs are boxes and scores, ``--task``, ``--anchors``),
``postprocess`` (``--postprocess`` and the NMS graph edit), ``reference`` (a NumPy NMS the graph
is tested against), ``metrics`` (mAP@0.5 through faster-coco-eval).
"""
