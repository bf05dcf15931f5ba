"""The batch: one job for one or several tasks, case outputs and the \"done\" rule, failure records,
status, shards, worker processes and interruptions."""
