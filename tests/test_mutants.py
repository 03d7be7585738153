"""The mutation pass's list stays usable as the code changes: a mutant whose snippet a refactor
removed would stop the pass at that mutant, and a renamed test would make it run nothing."""
import re
from pathlib import Path

import pytest

from tools.mutants import GROUPS

REPO = Path(__file__).resolve().parents[1]
MUTANTS = [m for group in GROUPS.values() for m in group]


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_each_mutant_applies_once_and_names_tests_that_exist(mutant):
    text = (REPO / mutant.path).read_text()
    assert text.count(mutant.original) == 1, f"{mutant.name}: snippet not once in {mutant.path}"
    assert mutant.mutated != mutant.original
    assert mutant.tests
    for node in mutant.tests:
        file, name = node.split("::")
        name = name.split("[")[0]  # a parametrized id names the function before its brackets
        source = (REPO / file).read_text()
        assert re.search(rf"^def {re.escape(name)}\(", source, re.M), f"{node} does not exist"


def test_mutant_names_are_unique():
    names = [m.name for m in MUTANTS]
    assert len(names) == len(set(names))
