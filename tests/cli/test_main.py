"""`uniform --version` and the help of the app and every subcommand, rendered by the real app."""

import re
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

import uniform_cli
from uniform_cli.cli.main import app

# Each subcommand and its positional arguments, as the usage line should name them.
ARGUMENTS = {
    "fetch": "MANIFEST",
    "clip": "SOURCE",
    "caption": "MANIFEST",
    "encode": "MANIFEST",
    "train": "RECIPE",
    "plot": "RUN",
    "generate": "PROMPTS",
    "export": "CHECKPOINT OUT",
    "gallery": "OUTDIR",
    "app": "",
    "eval": "GENERATED_DIR",
    "demo": "",
}
TABLE_NAME = re.compile(r"\[[a-z_][a-z0-9_.]*\]")  # a recipe table, as `[data]` or `[codec]`


def _help(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    return result.output


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()]


def test_version_prints_the_package_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output == f"uniform {uniform_cli.__version__}\n"
    shell = subprocess.run(
        [sys.executable, "-m", "uniform_cli.cli.main", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.split() == ["uniform", uniform_cli.__version__]


def test_every_subcommand_is_checked_here():
    assert list(typer.main.get_command(app).commands) == list(ARGUMENTS)


def test_app_help_lists_every_subcommand_and_shows_flags_without_a_type():
    text = _help()
    assert "Usage: uniform [OPTIONS] COMMAND [ARGS]..." in _lines(text)
    assert "<bool>" not in text
    assert "--version  Print the version and exit." in _lines(text)
    for name in ARGUMENTS:
        assert any(line.startswith(f"{name} ") for line in _lines(text)), name


@pytest.mark.parametrize("name", list(ARGUMENTS))
def test_usage_line_names_each_argument_in_capitals(name):
    usage = next(line for line in _lines(_help(name)) if line.startswith("Usage:"))
    assert usage == f"Usage: uniform {name} [OPTIONS] {ARGUMENTS[name]}".rstrip()  # not `{recipe}`


@pytest.mark.parametrize("name", list(ARGUMENTS))
def test_flags_show_without_a_type(name):
    assert "<bool>" not in _help(name)


@pytest.mark.parametrize("name", list(ARGUMENTS))
def test_recipe_table_names_in_help_strings_survive(name):
    text = _help(name)
    command = typer.main.get_command(app).commands[name]
    written = [command.help or ""] + [param.help or "" for param in command.params if not param.hidden]
    tables = {table for help in written for table in TABLE_NAME.findall(help)}
    for table in tables:
        assert table in text, f"{table} of a help string is missing from `uniform {name} --help`"
    if name == "encode":
        assert tables >= {"[data]", "[codec]"}  # the check above has something to check


def test_a_flag_shows_as_a_bare_flag():
    lines = _lines(_help("train"))
    assert any(re.fullmatch(r"--dry-run +Check the recipe, print what would train, and exit\.", line) for line in lines)


def test_docstring_paragraphs_are_rewrapped_and_examples_kept_as_written():
    lines = _lines(_help("fetch"))
    # The docstring breaks this sentence after "failures and"; help rewraps it to the terminal width.
    assert any("permanent failures and retries the rest." in line for line in lines), lines
    lines = _lines(_help("clip"))
    assert "Examples: uniform clip manifests/vggsound.csv --workers 8" in lines
    assert "uniform clip my_videos/ --root data/mine" in lines
