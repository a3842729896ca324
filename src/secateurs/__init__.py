"""secateurs: cut large language models down to size, with numbers that prove they still work."""

from .version import __version__
from .data import TokenWindows, describe_data, load_documents, make_windows, token_windows
from .errors import SecateursError
from .evaluation.evaluate import EvalSettings, evaluate
from .evaluation.perplexity import perplexity
from .models.adapter import Block, ModelAdapter
from .models.loading import LoadedModel, load_model, load_pruned
from .registry import list_methods
from .reporting.report import read_report, report_json
from .run.frame import PruneResult
from .run.prune import prune
from .run.spec import DataSpec, EvalSpec, OutputSpec
from .structured.methods import SearchOptions, StatisticOptions, StructuredOptions
from .unstructured.dpruner import DPrunerOptions
from .unstructured.methods import OBSOptions, UnstructuredOptions

__all__ = [
    "Block", "DPrunerOptions", "DataSpec", "EvalSettings", "EvalSpec", "LoadedModel", "ModelAdapter", "OBSOptions",
    "OutputSpec", "PruneResult", "SearchOptions", "SecateursError", "StatisticOptions", "StructuredOptions",
    "TokenWindows", "UnstructuredOptions", "describe_data", "evaluate", "list_methods", "load_documents",
    "load_model", "load_pruned", "make_windows", "perplexity", "prune", "read_report", "report_json", "token_windows",
]
