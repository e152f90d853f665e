"""Safe checkpoint loading, key remapping onto visattn models, and the registry of published weights."""

from .hub import WeightsUnavailableError, fetch
from .load import LoadResult, load_pretrained, read_state_dict
from .registry import (LEFT_OUT, WeightsEntry, default_tag, get_weights, label_ids, label_names, list_pretrained,
                       resolve_pretrained)

__all__ = ["LEFT_OUT", "LoadResult", "WeightsEntry", "WeightsUnavailableError", "default_tag", "fetch", "get_weights",
           "label_ids", "label_names", "list_pretrained", "load_pretrained", "read_state_dict", "resolve_pretrained"]
