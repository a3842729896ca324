"""secateurs: cut large language models down to size, with numbers that prove they still work."""

__version__ = "0.1.0"

from .adapter import Block, ModelAdapter
from .api import describe_data, evaluate
from .data import TokenWindows, calibration_windows, load_documents, make_windows
from .errors import SecateursError
from .loading import LoadedModel, load_model, load_pruned
from .methods import list_methods
from .perplexity import perplexity
from .prune import PruneResult, prune

__all__ = [
    "Block",
    "LoadedModel",
    "ModelAdapter",
    "SecateursError",
    "TokenWindows",
    "calibration_windows",
    "describe_data",
    "evaluate",
    "list_methods",
    "load_documents",
    "load_model",
    "load_pruned",
    "make_windows",
    "perplexity",
    "prune",
    "PruneResult",
]
