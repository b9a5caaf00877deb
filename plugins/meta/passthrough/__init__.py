"""pycni-passthrough: a minimal chained plugin that returns prevResult unchanged.

It exists to test the skel against real runtimes (Go libcni, our api) and to measure
the fixed cost of a Python plugin start-up in bench/.
"""
