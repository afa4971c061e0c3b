"""Streaming building blocks: each works on one band of rows of a map held as NHWC."""

__all__: list[str] = []  # the kernels are imported from their modules (ops.conv, ops.norm, ...)
