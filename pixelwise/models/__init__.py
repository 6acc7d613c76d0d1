"""Model builders; importing this package registers them."""
from pixelwise.models import unet  # noqa: F401
