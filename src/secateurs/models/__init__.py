"""Models: loading (aliases, GGUF, directories, hub ids), the adapter and its families, layer-input
capture, and the checkpoint format of pruned models."""
