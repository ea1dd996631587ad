"""Widgets of the chat screen; each owns one part of the layout and never talks to the engine or store."""
