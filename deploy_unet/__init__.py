"""deploy-unet: UNet/FCN segmentation nets from PyTorch to ONNX and TensorRT, with proof that nothing was lost.

Importing the package is cheap and never imports TensorRT or CUDA libraries; heavy modules load on use.
"""

__version__ = "0.1.0"
