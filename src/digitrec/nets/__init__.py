"""Layer 1, the networks: input geometry, models, the temperature, weights files, inference."""
