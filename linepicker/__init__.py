"""linepicker: find the best line to an OpenAI-compatible relay and keep it chosen."""

__version__ = "0.1.0"
APP_NAME = "linepicker"
