"""Say which extra to install when the AWS side is used without its packages."""

from __future__ import annotations

from importlib.util import find_spec

from orchestrator.errors import MissingDependenciesError

# import name -> distribution, for what `--engine stepfunctions` loads: the emulator (moto),
# the AWS SDK and the handlers' Powertools. `pip install 'orchestrator[aws]'` brings them all.
EMULATOR_PACKAGES = {"boto3": "boto3", "moto": "moto", "aws_lambda_powertools": "aws-lambda-powertools"}


def require_emulator_packages() -> None:
    """Raise `MissingDependenciesError` naming the extra to install if any emulator package is missing."""
    missing = [
        distribution for module, distribution in EMULATOR_PACKAGES.items() if find_spec(module) is None
    ]
    if missing:
        raise MissingDependenciesError(
            "--engine stepfunctions runs the compiled state machine on emulated AWS, which needs "
            f"packages that are not installed ({', '.join(missing)}); install the aws extra:\n"
            "  pip install 'orchestrator[aws]'"
        )
