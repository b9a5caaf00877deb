"""plugins/pkg/names.py: hashes equal hashlib's whichever sha256 module serves them."""
import hashlib

from plugins.pkg import names


def test_short_hash_and_host_veth_are_sha256_of_the_parts():
    assert names.short_hash("c1", "eth0") == hashlib.sha256(b"c1\0eth0").hexdigest()[:8]
    assert names.short_hash("n", "c", "i", n=16) == hashlib.sha256(b"n\0c\0i").hexdigest()[:16]
    assert names.host_veth("c1", "eth0") == "veth" + hashlib.sha256(b"c1\0eth0").hexdigest()[:8]


def test_sha256_digest_matches_hashlib():
    data = b"pycni\0node-a"
    assert names.sha256(data).digest() == hashlib.sha256(data).digest()
