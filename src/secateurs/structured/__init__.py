"""Structured pruning: the block search and the methods that remove whole blocks or layers."""
