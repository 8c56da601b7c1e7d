"""Salesforce API names (objects and fields).

A letter, then letters, digits and underscores; custom names end in `__c` (and friends), namespaced ones start
with `ns__` ("Custom Object Definition" and "Custom Field Definition" naming rules, Metadata API Developer Guide:
https://developer.salesforce.com/docs/atlas.en-us.api_meta.meta/api_meta/customobject.htm). SOQL has no
identifier quoting and REST puts object names in URL paths, so a name outside this grammar is refused before it
reaches either.
"""

from __future__ import annotations

import re

API_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def is_api_name(name: str) -> bool:
    return isinstance(name, str) and API_NAME.match(name) is not None
