"""Local fake servers (OpenAI-compatible chat, JSON search) and their pytest fixtures."""
