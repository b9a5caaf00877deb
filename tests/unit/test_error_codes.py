"""Every plugin's error codes: one table per plugin (its errors.py), each code unique, inside the
plugin's range, with a meaning and a fix, and the README's table for that plugin lists exactly
those codes (ARCHITECTURE.md: 100-119 vxlan, 120-139 dp-steering, 140-159 edgemesh, 160-179 doctor)."""
import importlib
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLUGINS = {   # errors module, README section heading, range
    "vxlan": ("plugins.main.vxlan.errors", "## vxlan", (100, 119)),
    "dp-steering": ("plugins.meta.dp_steering.errors", "## dp-steering", (120, 139)),
    "edgemesh": ("plugins.meta.edgemesh.errors", "## edgemesh", (140, 159)),
    "doctor": ("plugins.doctor.errors", "## pycni-doctor", (160, 179)),
}


def readme_codes(heading: str) -> set[int]:
    text = open(os.path.join(ROOT, "README.md")).read()
    start = text.index("\n" + heading) + 1
    end = text.find("\n## ", start + 1)
    section = text[start:end if end > 0 else len(text)]
    return {int(m) for m in re.findall(r"^\| (1\d\d) \|", section, re.M)}


@pytest.mark.parametrize("plugin", sorted(PLUGINS))
def test_codes_are_in_range_documented_and_in_the_readme(plugin):
    module, heading, (first, last) = PLUGINS[plugin]
    codes = importlib.import_module(module).CODES
    assert (codes.first, codes.last) == (first, last)
    assert codes.table, f"{plugin} defines no codes"
    for value, code in codes.table.items():
        assert first <= value <= last
        assert code.meaning.strip() and code.fix.strip(), f"{plugin} {value} needs a meaning and a fix"
    assert readme_codes(heading) == set(codes.table), f"README table of {plugin} differs from its errors.py"


def test_no_code_is_shared_between_plugins() -> None:
    seen: dict[int, str] = {}
    for plugin, (module, _, _) in PLUGINS.items():
        for value in importlib.import_module(module).CODES.table:
            assert value not in seen, f"{value} in {plugin} and {seen[value]}"
            seen[value] = plugin


@pytest.mark.parametrize("plugin", sorted(PLUGINS))
def test_every_failure_of_shared_code_has_an_owner(plugin):
    """The kinds plugins/pkg raises (kernel refusal, xtables lock, iptables, nft, netns, I/O,
    a missing tool) become a plugin code or a spec code, never 999."""
    from plugins.pkg import errors as pe
    from plugins.pkg.iptables import IptablesError, XtablesLockError
    from plugins.pkg.nft import NftError
    from plugins.pkg.rtnl import NetlinkError
    from libcni_py.netns import NetnsError
    module = importlib.import_module(PLUGINS[plugin][0])
    samples = [NetlinkError(1, "EPERM"), XtablesLockError("lock"), IptablesError("x"), NftError("x"),
               NetnsError(2, "gone"), PermissionError(13, "denied", "/var/lib/x"),
               FileNotFoundError(2, "No such file", "iptables-restore")]
    for exc in samples:
        err = module.translate(exc)
        assert err is not None, f"{plugin}: {type(exc).__name__} would be a 999"
        assert err.code != 999 and (err.code < 100 or err.code in module.CODES.table), (exc, err.code)
        assert pe.kind_of(exc) is not None
    assert module.translate(ZeroDivisionError()) is None      # our bug stays a bug
