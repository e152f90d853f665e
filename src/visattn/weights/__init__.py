"""Safe checkpoint loading, key remapping onto visattn models, the registry of published weights, and image-to-video
initialisation (``inflate_image_to_video``)."""

from .hub import WeightsUnavailableError, fetch
from .inflate import InflationReport, inflate_image_to_video, load_image_state_dict
from .load import LoadResult, load_pretrained, read_state_dict
from .registry import (LEFT_OUT, WeightsEntry, default_tag, get_weights, label_ids, label_names, list_pretrained,
                       resolve_pretrained)

__all__ = ["LEFT_OUT", "InflationReport", "LoadResult", "WeightsEntry", "WeightsUnavailableError", "default_tag",
           "fetch", "get_weights", "inflate_image_to_video", "label_ids", "label_names", "list_pretrained",
           "load_image_state_dict", "load_pretrained", "read_state_dict", "resolve_pretrained"]
