"""Runs from options to a batch job: ``predict`` (one task or several) builds its job here, on the
batch machinery (:mod:`autoorgan.batch`) and the per-case steps (:mod:`autoorgan.steps`)."""
