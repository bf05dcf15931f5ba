"""Results people read: per-structure statistics, preview pictures, an HTML overview of the output
folder and a run record per shard (see :mod:`autoorgan.steps.report` for how they join a batch)."""
