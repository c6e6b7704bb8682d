"""sharder: plan, verify and run LLMs sharded over many GPUs."""

__version__ = "0.1.0"
