"""The server's routes, one module per group: completions, chat completions, task endpoints, and
information (models, health, metrics, the playground)."""
