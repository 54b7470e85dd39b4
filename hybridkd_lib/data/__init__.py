"""Floor 1: the dataset catalogue (no torch) and the readers that build the datasets."""
