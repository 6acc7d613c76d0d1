from pixelwise.layers.conv import ConvBNReLU, DoubleConv  # noqa: F401
from pixelwise.layers.dense import DenseBlock, DenseLayer, TransitionDown, TransitionUp  # noqa: F401
