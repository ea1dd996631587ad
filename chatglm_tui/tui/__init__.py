"""The Textual app: imports engine.protocol, store, settings and errors; never the model or torch."""
