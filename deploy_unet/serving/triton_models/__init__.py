"""The python-backend models of a repository's ensemble (``triton-repo --ensemble``), copied as ``model.py``.

They run inside Triton's python backend (``triton_python_backend_utils``), never in deploy-unet itself, and
import only NumPy and ``deploy_unet_processing``, the copy of ``deploy_unet.processing`` written beside them.
"""
