"""Compound fields (Address, Name/PersonName, Geolocation): one flattening and one component lookup.

A change event carries a compound field as a nested record (`BillingAddress{State, City, …}`) and names its
subfields `CompoundField.ComponentField` in the header bitmaps; the object's describe lists the component
fields under their own names (`BillingState`, `FirstName`, `Loc__Latitude__s`) with `compoundFieldName` set.
"Get Compound Fields in Change Events", Change Data Capture Developer Guide:
https://developer.salesforce.com/docs/atlas.en-us.change_data_capture.meta/change_data_capture/cdc_subscribe_compound_fields.htm
(docs/pubsub-cdc.md §5, §6). Pure functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from replicator.model import FieldSpec


def subfield_name(compound: str, child: str) -> str:
    """`BillingAddress` + `State` → `BillingAddress.State`: how change events name a compound's subfield."""
    return f"{compound}.{child}"


def flatten_compound(compound: str, value: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """(`Compound.Child`, value) for every subfield of one compound value, nulls included, in record order."""
    for child, sub in value.items():
        yield subfield_name(compound, child), sub


def group_components(fields: Iterable[FieldSpec]) -> dict[str, list[str]]:
    """Component field names by compound field name, from describe (`compoundFieldName`), in describe order."""
    components: dict[str, list[str]] = {}
    for f in fields:
        if f.compound_field_name:
            components.setdefault(f.compound_field_name, []).append(f.name)
    return components


def find_component(compound: str, child: str, components: Iterable[str]) -> str | None:
    """The component field that holds `compound.child`, among the compound's components (from describe).

    `BillingAddress.State` → `BillingState` (an address drops `Address` and prefixes the rest);
    `Name.FirstName` → `FirstName`; `Loc__c.Latitude` → `Loc__Latitude__s` (a custom geolocation's components
    end in `__s`: "Compound Field Considerations and Limitations",
    https://developer.salesforce.com/docs/atlas.en-us.api.meta/api/compound_fields_limitations.htm).
    """
    stem = compound[: -len("Address")] if compound.endswith("Address") else ""
    for comp in components:
        if comp in (stem + child, child) or comp.endswith(child) or comp.endswith(f"{child}__s"):
            return comp
    return None
