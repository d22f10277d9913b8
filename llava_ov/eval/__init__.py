"""Evaluation: hash-pinned task specs, a cached checkpoint runner, the lmms-eval adapter and the report."""
