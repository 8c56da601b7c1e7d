"""`replicator discover --objects`: which describeGlobal entries a list of names and patterns picks (app/discover.py)."""

import pytest

from replicator.app.discover import choose
from replicator.model import ConfigError

ENTRIES = [
    {"name": "Account", "queryable": True, "replicateable": True},
    {"name": "Invoice__c", "queryable": True, "replicateable": True},
    {"name": "AccountChangeEvent", "queryable": False, "replicateable": False},
    {"name": "Report", "queryable": True, "replicateable": False},
]


def test_only_queryable_and_replicateable_objects_are_listed():
    assert [e["name"] for e in choose(ENTRIES, [])] == ["Account", "Invoice__c"]


def test_names_and_patterns_are_case_insensitive_and_patterns_may_match_nothing():
    assert [e["name"] for e in choose(ENTRIES, ["ACCOUNT", "*__c", "Zz*"])] == ["Account", "Invoice__c"]
    assert choose(ENTRIES, ["account*"]) == [ENTRIES[0]]  # AccountChangeEvent is not replicable


def test_a_name_that_is_not_replicable_or_not_there_is_a_usage_error():
    with pytest.raises(ConfigError, match=r"Report is not replicable \(describeGlobal: queryable=True, "
                                          r"replicateable=False\)"):
        choose(ENTRIES, ["report"])
    with pytest.raises(ConfigError, match="no object 'Acount'.*did you mean Account"):
        choose(ENTRIES, ["Acount"])
