"""Joint sequence + reconstruction learning: task files, losses, training, data parallelism."""
