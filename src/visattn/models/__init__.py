"""Model families; importing this package registers every variant."""

from . import maxvit  # noqa: F401
from . import cloformer  # noqa: F401
from . import davit  # noqa: F401
from . import mvit  # noqa: F401
from . import catnet  # noqa: F401
from . import grl  # noqa: F401
