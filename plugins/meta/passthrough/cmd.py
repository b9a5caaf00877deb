"""ADD returns prevResult (or an empty result); CHECK and DEL succeed; GC/STATUS no-op."""
from libcni_py.skel import CmdArgs, Plugin, plugin_main
from plugins.pkg.schema import validator


def cmd_add(args: CmdArgs):
    from libcni_py.types import Result      # ADD only (ipaddress): VERSION, CHECK, DEL go without
    prev = args.prev_result
    return prev if prev is not None else Result(cni_version=args.cni_version)


def cmd_check(args: CmdArgs):
    return None


def cmd_del(args: CmdArgs):
    return None


PLUGIN = Plugin(add=cmd_add, check=cmd_check, delete=cmd_del, gc=cmd_del, status=cmd_check,
                about="pycni-passthrough: returns prevResult unchanged",
                validate=validator("passthrough"))


def main():
    plugin_main(PLUGIN)


if __name__ == "__main__":
    main()
