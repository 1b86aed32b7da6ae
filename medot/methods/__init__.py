"""The medot methods, one sub-package each (model, losses, training glue, CLI, paper notes)."""
