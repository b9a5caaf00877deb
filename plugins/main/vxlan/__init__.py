"""vxlan: a flannel-style overlay (one route, one ARP and one FDB entry per remote node).

The overlay half lives in overlay.py (the API the pod half calls), lease.py,
registry/, device.py, peers.py and agent.py. Error codes 100-119 are ours: the
overlay's below, the pod half's (113-116) in pod.py.
"""

REGISTRY_UNREADABLE = 100     # the registry cannot be read or written (I/O, permissions, a directory)
REGISTRY_CORRUPT = 101        # the registry document is not what we wrote (bad JSON, bad fields)
REGISTRY_UNKNOWN_TYPE = 102   # registry.type names no backend
NETWORK_MISMATCH = 103        # `network`/`subnetLen`/`vni` differ from what the registry holds
SUBNETS_EXHAUSTED = 104       # no free subnet of `subnetLen` left in `network`
BAD_SUBNET_LEN = 105          # `subnetLen` not longer than the network prefix, or > 30
NO_UNDERLAY = 106             # no underlay device/address (no default route, iface missing, no IPv4)
DEVICE_FAILED = 107           # the vxlan device could not be created or configured
PEER_PROGRAMMING = 108        # the kernel refused an ARP/FDB/route operation for a peer
DEVICE_DRIFT = 109            # CHECK: device missing or an attribute is wrong
PEER_DRIFT = 110              # CHECK: a remote lease's ARP/FDB/route entry is missing or wrong
LEASE_LOST = 111              # CHECK: this node holds no lease in the registry
