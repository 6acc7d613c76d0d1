from pixelwise.layers.conv import ConvBNReLU, DoubleConv  # noqa: F401
