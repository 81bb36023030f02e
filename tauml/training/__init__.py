"""Training loops: the tokenizer, the backbone's next-token pretraining, and the tau tasks."""
