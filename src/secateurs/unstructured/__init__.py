"""Unstructured pruning: masks, statistics collectors, OBS, the sequential pipeline and the methods
(magnitude, Wanda, SparseGPT, D-Pruner) that zero single weights."""
