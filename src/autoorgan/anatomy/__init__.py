"""Anatomical sense of a label map: which structures lie on which side and in which head-to-feet
order (:mod:`~autoorgan.anatomy.priors`), and the checks of a map against them
(:mod:`~autoorgan.anatomy.checks`), used on every prediction and to calibrate a model's
orientation. Pure functions of label arrays and grids."""
