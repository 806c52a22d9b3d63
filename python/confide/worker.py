"""The confined process that runs a model owner's training code at a data owner's node.

A node starts it as ``python3 -I -B -m confide.worker`` through ``confide code-worker``, which
has already confined the process (landlock: read-only environment and bundle, writes only in
the scratch directory; seccomp: no sockets, no ``io_uring``, no ``ptrace``). Before it reads
anything from the node, this module forbids starting programs (a second seccomp filter), then
moves the frame channel off stdin and stdout so that what the code prints goes to stderr,
which the node keeps in a local log only. Not meant to be run by hand.
"""

from __future__ import annotations

import importlib
import os
import sys


def main() -> int:
    from . import _native

    _native.seal_worker()
    inp = os.fdopen(os.dup(0), "rb", buffering=0)
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.close(0)
    os.dup2(2, 1)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    from .client import Context, _read_frame

    hello, data = _read_frame(inp)
    if hello.get("type") != "hello" or hello.get("protocol") != 1:
        print(f"confide.worker: unexpected first frame {hello.get('type')!r}", file=sys.stderr)
        return 2
    module_name, function = hello["entry"].split(":")
    sys.path.insert(0, hello["bundle"])
    entry = getattr(importlib.import_module(module_name), function)
    ctx = Context(hello, data, inp, out)
    entry(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
