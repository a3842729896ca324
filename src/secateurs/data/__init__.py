"""Calibration and evaluation text: readers, the catalogue of named sets, token windows."""

from .catalogue import DATA_DIR_ENV, DATA_FILES, DOMAINS, NAMED_SETS, check_source, describe_data, domain_sets, load_documents, resolve_data_dir
from .readers import Document, DocumentSet, legalbench_label, load_file, read_jsonl, read_jsonl_rows, read_lines
from .windows import DOCUMENT_SEPARATOR, TokenWindows, make_windows, token_sha256, token_windows

__all__ = ["DATA_DIR_ENV", "DATA_FILES", "DOCUMENT_SEPARATOR", "DOMAINS", "NAMED_SETS", "Document", "DocumentSet", "TokenWindows",
           "check_source", "describe_data", "domain_sets", "legalbench_label", "load_documents", "load_file", "make_windows",
           "read_jsonl", "read_jsonl_rows", "read_lines", "resolve_data_dir", "token_sha256", "token_windows"]
