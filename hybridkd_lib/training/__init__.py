"""Floor 5: one training run: its configuration, learner, step, memory tricks, set-up, loop, folder and launch."""
