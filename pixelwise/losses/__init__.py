from pixelwise.losses.semantic import cross_entropy, dice_loss, lovasz_softmax  # noqa: F401
