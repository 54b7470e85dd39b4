"""Floor 0: what every floor stores and starts: the results store, checkpoints, plug-ins, child processes."""
