"""Helpers shared by the plugins. Nothing here knows CNI results."""
