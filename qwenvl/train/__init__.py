"""Training: recipes -> TrainConfig, data and collation, freeze policy, loop, checkpoint/resume."""
