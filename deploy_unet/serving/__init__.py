"""Serving: Triton Inference Server model repositories (``repository.py``) and ``serve`` (``server.py``).

Imports the runners and the metadata; imported by nothing but the CLI. ``serve`` needs the ``serve`` extra
(nvidia-pytriton, tritonclient), imported only when a server starts; writing a repository needs neither
(its configs are parsed back with Triton's schema when tritonclient is there).
"""
