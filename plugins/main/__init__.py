"""Main (interface) plugins."""
