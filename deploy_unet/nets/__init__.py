"""Reference segmentation nets and their registry: ``create_net("unet", depth=4)``, ``list_nets()``."""

from deploy_unet.nets import fcn as _fcn  # noqa: F401  (registers fcn32s/16s/8s)
from deploy_unet.nets import unet as _unet  # noqa: F401  (registers unet)
from deploy_unet.nets import unet3d as _unet3d  # noqa: F401  (registers unet3d)
from deploy_unet.nets import unetpp as _unetpp  # noqa: F401  (registers unetpp)
from deploy_unet.nets.blocks import SegmentationNet
from deploy_unet.nets.fcn import FCN
from deploy_unet.nets.registry import create_net, list_nets, net_options, register_net
from deploy_unet.nets.unet import UNet
from deploy_unet.nets.unet3d import UNet3D
from deploy_unet.nets.unetpp import UNetPlusPlus

__all__ = ["FCN", "SegmentationNet", "UNet", "UNet3D", "UNetPlusPlus", "create_net", "list_nets", "net_options", "register_net"]
