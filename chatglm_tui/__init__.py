"""chatglm-tui: a fast, faithful terminal chat for ChatGLM-6B."""

__version__ = "0.1.0"
