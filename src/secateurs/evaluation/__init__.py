"""Evaluation: perplexity, tasks and their scoring and metrics, speed, the lm-evaluation-harness bridge."""
