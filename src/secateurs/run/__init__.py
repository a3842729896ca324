"""A pruning run: its spec, the steps both wings share, and the structured and unstructured wings."""
