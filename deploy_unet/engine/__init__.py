"""TensorRT engines: the build plan and builder (``build.py``), the manifest (``manifest.py``), and the
CUDA-device and TensorRT checks every TensorRT path runs first (``device.py``).

Nothing here imports TensorRT at module import time.
"""
