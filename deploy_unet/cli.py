"""The ``deploy-unet`` command line: a thin layer that parses, calls one library function, prints.

Heavy modules (torch, onnxruntime, TensorRT) are imported inside commands so ``--help`` stays fast
and works without any of them.
"""

from __future__ import annotations

import functools
import sys

import click

from deploy_unet import __version__
from deploy_unet.errors import DeployUnetError


def handle_errors(func):
    """Turn user errors into one ``error:`` line and their exit code; real bugs keep their traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except DeployUnetError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="deploy-unet")
def cli() -> None:
    """Take UNet/FCN segmentation nets from PyTorch to ONNX and TensorRT, and prove nothing was lost."""


# --- export and inspect (foundation) ----------------------------------------------------------------


# --- quantize (precision) ---------------------------------------------------------------------------


# --- validate, bench, pipeline (runners) ------------------------------------------------------------


# --- build-engine, doctor (TensorRT) ----------------------------------------------------------------


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
