"""OpenVINO beyond the runner (``runtime/openvino_runner.py``): the graph rewrite OpenVINO needs on the project's
Q/DQ files (``graph``), the IR artifact with its manifest (``convert``), and the CPU's capabilities (``capabilities``).

Everything here imports ``openvino`` lazily; ``graph`` needs only ``onnx``.
"""
