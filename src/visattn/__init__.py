"""visattn: efficient vision attention, and the backbones and tasks built on it."""

from . import layers
from .registry import create_attention, create_model, list_attention, list_models
from .weights import load_pretrained

__version__ = "0.1.0"

__all__ = ["create_model", "list_models", "create_attention", "list_attention", "load_pretrained", "layers"]
