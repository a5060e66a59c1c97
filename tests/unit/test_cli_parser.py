"""The command line's parsers: every command explains itself and reaches a handler (no I/O)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from bridge import cli


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:  # argparse offers no public walk over subcommands
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _commands(child, (*path, name))


COMMANDS = list(_commands(cli.parser()))


def _leaf(parser: argparse.ArgumentParser) -> bool:
    return not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)


def _cases(leaves_only: bool = False) -> list[object]:
    return [
        pytest.param(path, parser, id=" ".join(path) or "bridge")
        for path, parser in COMMANDS
        if path and (_leaf(parser) or not leaves_only)
    ]


@pytest.mark.parametrize(("path", "parser"), _cases())
def test_every_command_says_what_it_does(
    path: tuple[str, ...], parser: argparse.ArgumentParser
) -> None:
    assert parser.description, f"`bridge {' '.join(path)} --help` has no description"


@pytest.mark.parametrize(
    ("path", "parser"), [pytest.param((), COMMANDS[0][1], id="bridge"), *_cases()]
)
def test_every_flag_has_help(path: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
    silent = [a.option_strings[0] for a in parser._actions if a.option_strings and a.help is None]
    assert not silent, f"`bridge {' '.join(path)}` flags without help: {silent}"


@pytest.mark.parametrize(("path", "parser"), _cases(leaves_only=True))
def test_every_command_reaches_a_handler(
    path: tuple[str, ...], parser: argparse.ArgumentParser
) -> None:
    assert callable(parser.get_default("run")), f"`bridge {' '.join(path)}` runs nothing"


def test_every_group_registers_commands() -> None:
    top = {path[0] for path, _ in COMMANDS if len(path) == 1}
    for group in cli.GROUPS:
        sub = cli.options.Parser().add_subparsers()
        cli.register(group)(cli.options.Commands(sub))
        assert sub.choices, f"bridge.cli.{group} registers no command"
        assert set(sub.choices) <= top


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "inf", "soon"])
def test_activate_refuses_a_timeout_that_is_not_a_positive_number(
    timeout: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["activate", "--vendor", "a", "--model", "b", "--identifier", "c", "--timeout", timeout]
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert (
        f"error: usage: argument --timeout: {timeout!r} is not a positive number of seconds" in err
    )
