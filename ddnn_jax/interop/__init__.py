"""Other frameworks and runtimes: PyTorch (the reference model, weight conversion both ways, its
training step and the torch training backend) and the device runtimes the edge half is exported
to (``export_edge``: ONNX through ``onnx_graph`` and ``onnx_ops``, LiteRT through ``litert``,
both in the registry of ``engines``).

``reference`` needs torch (the optional extra ``parity``); ``convert`` imports it only to read and
write ``.pth`` files; the exports need the ``export`` extra (and TensorFlow for LiteRT).
"""
