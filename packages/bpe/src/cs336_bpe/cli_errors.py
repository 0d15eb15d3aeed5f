"""One way for every command line of ours to end on an error the user can fix: one line, no traceback.

    @main.command()
    @friendly_errors(BPEInputError, interrupted="interrupted: no output file was written or changed")
    def encode(...): ...

cs336-bpe and cs336-train both decorate their commands with it (cs336-train passes its own error class). Only
click and the standard library are imported here, so a command line that imports this stays quick to start.
"""

import functools
from collections.abc import Callable

import click


def friendly_errors(fixable: type[Exception] | tuple[type[Exception], ...], interrupted: str,
                    prefix: str = "") -> Callable:
    """Decorate a click command so that what a user can fix ends it with one line on stderr:

    - a `fixable` error: "Error: <message>" and exit status 1 (click's usual way); one that carries an
      `exit_code` (a run stopped by a signal after saving its work) prints "<prefix><message>" and exits with it;
    - Ctrl-C: "<prefix><interrupted>" and exit status 130 (128 + SIGINT), the shell's convention.

    Any other exception is a bug and keeps its traceback.
    """

    def decorator(command: Callable) -> Callable:
        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            try:
                return command(*args, **kwargs)
            except fixable as error:
                exit_code = getattr(error, "exit_code", None)
                if exit_code is None:
                    raise click.ClickException(str(error)) from None
                click.echo(f"{prefix}{error}", err=True)
                raise SystemExit(exit_code) from None
            except KeyboardInterrupt:
                click.echo(f"{prefix}{interrupted}", err=True)
                raise SystemExit(130) from None

        return wrapper

    return decorator
