"""What only sweeps use: composing jobs, fused training, searches and pruning, and the sweep report."""
