"""Floor 4: the paper: the methods' registry, the losses, the hybrids M_k and the alignment modules A_k."""
