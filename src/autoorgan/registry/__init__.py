"""Task tables: the seven tasks and custom ones (``configs/``), the whole-body table, task selection."""
