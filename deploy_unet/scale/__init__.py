"""Predict beyond one image in memory: images of any size streamed chunk by chunk (``scale.stream``), and the
chunks as tasks on a Dask cluster (``scale.cluster``), both running one chunk with ``scale.chunks``. Imports
``runtime`` and ``io`` only."""
