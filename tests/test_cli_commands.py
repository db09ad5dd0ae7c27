"""Every command of ``steplabel`` is found where the command line looks for it
(``cli.COMMAND_MODULES``: ``steplabel.dataset.*``, ``steplabel.pipelines.evaluate``)."""

from __future__ import annotations

import pytest

from steplabel.pipelines import cli

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name", sorted(cli.COMMAND_MODULES))
def test_every_command_module_is_where_the_cli_looks(name):
    module = cli._command_module(name)
    assert module.__name__ == f"steplabel.{cli.COMMAND_MODULES[name][0]}"
    assert callable(module.add_arguments) and callable(module.run)


def test_the_help_lists_every_command(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for name in ["run", "demo-data", *cli.COMMAND_MODULES]:
        assert f"    {name} " in out
