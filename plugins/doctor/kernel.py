"""Kernel hazards (the KubeEdge edgemesh article's getsockopt(SO_ORIGINAL_DST) hang on 4.15.x, kernel bug
198791): the running kernel is in a range known bad for something the suite
relies on. The table is edgemesh's (plugins/meta/edgemesh/kernel.py): one source of truth."""
from __future__ import annotations

from plugins.meta.edgemesh import kernel as edgemesh_kernel

from .finding import Finding, Fix

TYPE_CHECKING = False          # typing stays off the plugins' CHECK path (checkctx.py)
if TYPE_CHECKING:
    from .runner import Context

NAME = "kernel-hazards"
PER_NAMESPACE = False


def check(ctx: Context) -> list[Finding]:
    release = ctx.kernel_release or edgemesh_kernel.running_release()
    h = edgemesh_kernel.hazard_for(release)
    if h is None:
        return []
    return [Finding(
        NAME, "error", "kernel", None,
        f"kernel {release} is in the known-bad range {h.series}: getsockopt(SO_ORIGINAL_DST) can hang",
        "the edgemesh mesh proxy calls getsockopt(SO_ORIGINAL_DST) for every hijacked connection; on this "
        "kernel the call can deadlock, leaving the proxy in D state (unkillable) and every service "
        f"connection through it hanging. source: {h.source}",
        [Fix(f"boot a kernel outside {h.series} (4.19.12 or later)", None),
         Fix("edgemesh refuses ADD on this kernel unless allowKnownBadKernel is true; leave it false", None)])]
