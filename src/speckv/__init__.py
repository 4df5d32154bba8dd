"""speckv: adaptive, lossless speculative decoding, measured in wall-clock tokens/second."""

from speckv.api import Decoder, Result, Stream, load
from speckv.engine import Engine, SamplingConfig
from speckv.errors import SpeckvError

__version__ = "0.1.0"
__all__ = ["Decoder", "Engine", "Result", "SamplingConfig", "SpeckvError", "Stream", "load", "__version__"]
