"""vxlan: a flannel-style overlay (one route, one ARP and one FDB entry per remote node).

The overlay half lives in overlay.py (the API the pod half calls), lease.py,
registry/, device.py, peers.py and agent.py; the pod half in cmd.py, pod.py, ipam.py
and masq.py. The config is config.NetConf; every error code (100-119) is in errors.py.
"""
