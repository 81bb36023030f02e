"""Arrays in, numbers out: metrics, no-learning references, the task registry, and tokenization, generation and
embedding scores.  Imports data and models only."""
