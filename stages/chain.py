"""Placeholder until issue 6 lands."""
from pipeline.errors import UserError
from stages._common import user_errors


@user_errors
def run_command() -> None:
    raise UserError("not built yet (issue 6)")


@user_errors
def status_command() -> None:
    raise UserError("not built yet (issue 6)")


@user_errors
def sweep_command() -> None:
    raise UserError("not built yet (issue 6)")


@user_errors
def compare_command() -> None:
    raise UserError("not built yet (issue 6)")
