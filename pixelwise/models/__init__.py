"""Model builders; importing this package registers them."""
from pixelwise.models import unet  # noqa: F401
from pixelwise.models import fcn  # noqa: F401
from pixelwise.models import tiramisu  # noqa: F401
from pixelwise.models import mask_rcnn  # noqa: F401
