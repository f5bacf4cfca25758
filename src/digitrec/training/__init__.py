"""Layer 2, training: the runtime, torch.distributed, the training state and loop, ensembles."""
