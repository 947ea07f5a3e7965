"""Plain ``nn.Module`` networks with explicit typed arguments (no configs, no device calls)."""
