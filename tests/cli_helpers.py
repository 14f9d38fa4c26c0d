"""What the command-line tests share."""

from __future__ import annotations

from click.testing import Result


def one_line_error(result: Result) -> str:
    """The ``Error: ...`` line of a command that failed as it should: exit code 1, one line,
    no traceback."""
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]
