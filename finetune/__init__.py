"""Fine-tuning and evaluation: CLUE tasks, offline demo tasks, metrics, submissions, probe."""
