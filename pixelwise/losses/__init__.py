from pixelwise.losses.semantic import cross_entropy  # noqa: F401
