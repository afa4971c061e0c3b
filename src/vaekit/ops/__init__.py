"""Streaming building blocks: each works on one band of rows of a map held as NHWC."""
