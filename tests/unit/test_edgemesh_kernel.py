"""The kernel hazard table: 4.15 (kubeedge/edgemesh#227; the netfilter getsockopt lock change) and the
4.14 backport range are refused."""
import pytest

from plugins.meta.edgemesh import kernel


@pytest.mark.parametrize("release", ["4.15.0", "4.15.6-1.el7.elrepo.x86_64", "4.15.18-041518-generic",
                                     "4.14.22", "4.14.40-1.el7"])
def test_known_bad_releases(release):
    err = kernel.error_for(release)
    assert err is not None and err.code == 140
    assert release in err.msg and "SO_ORIGINAL_DST" in err.msg
    assert "allowKnownBadKernel" in err.details and "source:" in err.details


@pytest.mark.parametrize("release", ["3.10.0-514.el7.x86_64", "4.14.21", "4.14.41", "4.16.0",
                                     "4.19.12-1.el7.elrepo.x86_64", "5.2.14-1.el7.elrepo.x86_64",
                                     "6.18.44-fc-v669", "garbage", ""])
def test_fine_or_unparsable_releases(release):
    assert kernel.error_for(release) is None


def test_every_row_names_its_source_and_a_sane_range():
    for h in kernel.HAZARDS:
        assert h.first <= h.last and h.source and h.series
    assert any("kubeedge/edgemesh/issues/227" in h.source and "485595768d89" in h.source for h in kernel.HAZARDS)
    assert not any("article" in h.source for h in kernel.HAZARDS)


def test_parse_release():
    assert kernel.parse_release("4.15.6-1.el7.elrepo.x86_64") == (4, 15, 6)
    assert kernel.parse_release("5.4") == (5, 4, 0)
    assert kernel.parse_release("v5.4") is None
