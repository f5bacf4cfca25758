"""Layer 0, the core: configs, data, files, the run folder, metrics and figures. No torch."""
