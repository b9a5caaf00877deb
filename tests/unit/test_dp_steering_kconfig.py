"""datapath auto reads the kernel config for act_pedit: config_has_pedit inflates the gzip'd
config only up to the symbol's line, with the answer of reading it whole."""
import gzip
import os

import pytest

from plugins.meta.dp_steering.datapath_pedit import config_has_pedit

FILLER = b"".join(b"CONFIG_FILLER_%d=y\n# CONFIG_OTHER_%d is not set\n" % (i, i) for i in range(4000))


@pytest.mark.parametrize("line, want", [
    (b"CONFIG_NET_ACT_PEDIT=y", True), (b"CONFIG_NET_ACT_PEDIT=m", True),
    (b"# CONFIG_NET_ACT_PEDIT is not set", False), (b"CONFIG_NET_ACT_PEDIT_X=y", False), (b"", False),
    (b"  CONFIG_NET_ACT_PEDIT=m  ", True)])
@pytest.mark.parametrize("where", ["start", "middle", "end", "last line, no newline"])
@pytest.mark.parametrize("chunk", [7, 8192])
def test_the_symbol_line_decides_wherever_it_is(line, want, where, chunk):
    half = len(FILLER) // 2
    half = FILLER.index(b"\n", half) + 1
    body = {"start": line + b"\n" + FILLER, "middle": FILLER[:half] + line + b"\n" + FILLER[half:],
            "end": FILLER + line + b"\n", "last line, no newline": FILLER + line}[where]
    assert config_has_pedit(gzip.compress(body), chunk) is want


def test_crlf_lines_and_a_broken_stream():
    assert config_has_pedit(gzip.compress(FILLER.replace(b"\n", b"\r\n") + b"CONFIG_NET_ACT_PEDIT=y\r\n"))
    good = gzip.compress(FILLER + b"CONFIG_NET_ACT_PEDIT=y\n")
    assert not config_has_pedit(good[:len(good) // 2])          # truncated: no answer, so no
    assert not config_has_pedit(os.urandom(64))
    assert not config_has_pedit(b"")


def test_this_kernels_config_reads_the_same_as_inflated_whole():
    try:
        with open("/proc/config.gz", "rb") as f:
            raw = f.read()
    except OSError:
        pytest.skip("no /proc/config.gz")
    import zlib
    lines = [ln.strip() for ln in zlib.decompress(raw, 31).splitlines()]
    assert config_has_pedit(raw) is (b"CONFIG_NET_ACT_PEDIT=y" in lines or b"CONFIG_NET_ACT_PEDIT=m" in lines)
