"""PyTorch interoperability: the reference model in PyTorch and weight conversion both ways.

``reference`` needs torch (the optional extra ``parity``); ``convert`` imports it only to read and
write ``.pth`` files.
"""
