"""pycni-doctor: finds the network failures that cost operators days (NFQUEUE with no reader,
policy routes stealing pod replies, rp_filter/forwarding, known-bad kernels), in every network
namespace of the node, read-only. Never imported on a plugin's exec path."""
