"""Command groups of the `medtwin` CLI, one module per area, mounted by `medtwin.cli`."""
