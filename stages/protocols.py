"""Placeholder until issue 5 lands."""
from pipeline.errors import UserError
from stages._common import user_errors


@user_errors
def cross_command() -> None:
    raise UserError("not built yet (issue 5)")


@user_errors
def zeroshot_command() -> None:
    raise UserError("not built yet (issue 5)")
