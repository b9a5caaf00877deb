"""libcni_py: the CNI protocol in Python, plugin side (skel) and runtime side (api)."""
__version__ = "0.1.0"
