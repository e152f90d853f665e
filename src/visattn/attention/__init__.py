"""Attention mechanisms, one file each; importing this package registers them."""

from . import multi_axis  # noqa: F401
from . import attn_conv  # noqa: F401
from . import channel_group, spatial_window  # noqa: F401
from . import pooling  # noqa: F401
from . import cross_masked  # noqa: F401
from . import anchored_stripe, window_v2  # noqa: F401
