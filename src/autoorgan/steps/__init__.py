"""Per-case steps of a predict run behind one protocol: several tasks (cascade), ROI subset, split
masks, anatomical repair and reports."""
