"""Safe checkpoint loading and key remapping onto visattn models."""

from .load import LoadResult, load_pretrained, read_state_dict

__all__ = ["LoadResult", "load_pretrained", "read_state_dict"]
