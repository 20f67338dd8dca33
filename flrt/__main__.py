"""``python -m flrt``: the command line (:func:`flrt.cli.main`), Ctrl-C included from the first line.

Ctrl-C raises :class:`KeyboardInterrupt` wherever the interpreter is, imports included: it is
caught from this module's first line, while the command line is still being imported, and once
the command is over, Ctrl-C during the interpreter's shutdown ends the process as the signal does
by default (exit status 130 in a shell) rather than with a stack trace.
"""

import sys

try:
    from flrt.cli import main

    code = main()
except KeyboardInterrupt:
    print("flrt: interrupted", file=sys.stderr)
    code = 130

try:  # what the command printed leaves before the shutdown that Ctrl-C may now interrupt
    sys.stdout.flush()
    sys.stderr.flush()
except (OSError, ValueError):  # a closed or broken pipe: what was left to print is lost anyway
    pass
import signal  # only now: it loads enum, time Ctrl-C could land in while importing

signal.signal(signal.SIGINT, signal.SIG_DFL)
sys.exit(code)
