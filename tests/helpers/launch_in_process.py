"""``moe_jax.launch``'s ``main`` in this process, for tests of what it refuses before any stage runs: a
subprocess would spend most of its time importing every stage again."""

import contextlib
import io
import logging
import subprocess
import sys
import traceback

from absl import app, flags
from absl import logging as absl_logging
from absl.testing import flagsaver

from moe_jax import launch


def launch_main(*args):
    """``main`` with its flags (``--name=value``) set as app.run parses them and restored after: a
    ``CompletedProcess`` whose returncode and stderr are those of ``python -m moe_jax.launch *args``
    (app.run prints a UsageError's message with status 1; another exception is a traceback, status 1).
    What main sets up for a run (the moe_jax logger's level, a filter on absl's handler) is undone after."""
    fv = flags.FLAGS
    was_parsed, code = fv.is_parsed(), 0
    logger, absl_handler = logging.getLogger("moe_jax"), absl_logging.get_absl_handler()
    level, filters = logger.level, list(absl_handler.filters)
    out, err = io.StringIO(), io.StringIO()
    with flagsaver.flagsaver(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            for arg in args:
                name, _, value = arg[2:].partition("=")
                fv[name].parse(value)
            fv.mark_as_parsed()
            launch.main(["moe_jax.launch"])
        except app.UsageError as e:
            code = e.exitcode
            print(f"FATAL Flags parsing error: {e}", file=sys.stderr)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
        except Exception:  # noqa: BLE001  the interpreter's report of an uncaught exception
            code = 1
            traceback.print_exc()
        finally:
            if not was_parsed:
                fv.unparse_flags()
            logger.setLevel(level)
            absl_handler.filters[:] = filters
    return subprocess.CompletedProcess(["moe_jax.launch", *args], code, out.getvalue(), err.getvalue())
