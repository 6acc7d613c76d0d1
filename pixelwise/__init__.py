"""pixelwise: the classic fully convolutional segmentation methods, faithful to their papers."""
from pixelwise.registry import create_model, list_models, register_model

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "register_model", "__version__"]
