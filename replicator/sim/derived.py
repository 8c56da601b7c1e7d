"""Values the org computes from other fields of the same record, at generation (generator.py) and after every
change (cdc.py): clients read them (Bulk, REST, ground truth) but never set them.

- Contact `Name` from its components. Format (this simulator DECIDES; the repository's docs do not give one):
  "Salutation FirstName MiddleName LastName Suffix", single spaces, empty parts left out: the order of the
  English (United States) long format of "lightning:formattedName" (Lightning Components Developer Guide,
  https://developer.salesforce.com/docs/atlas.en-us.212.0.lightning.meta/lightning/aura_compref_lightning_formattedName.htm,
  "Mr. John Middleton Doe The 3rd Jo"), without the informal name, which this org never sets.
- Opportunity `Expected_Revenue__c`, a formula: Amount x Probability / 100, rounded to its 2 decimal places, null
  when either input is null (describe's formulaTreatNullNumberAsZero is false). Formula fields are never in
  change events (docs/pubsub-cdc.md §5; docs/salesforce-coverage.md §2), so it changes in the org's
  records, Bulk and REST results, but never appears in an event.
"""

from __future__ import annotations

from collections.abc import Callable


def person_name(salutation: str | None, first: str | None, middle: str | None, last: str | None,
                suffix: str | None) -> str | None:
    return " ".join(p for p in (salutation, first, middle, last, suffix) if p) or None


def expected_revenue(amount: float | None, probability: float | None) -> float | None:
    return None if amount is None or probability is None else round(amount * probability / 100, 2)


# object -> computed field -> (input fields, function of the inputs' values)
DERIVED: dict[str, dict[str, tuple[tuple[str, ...], Callable]]] = {
    "Contact": {"Name": (("Salutation", "FirstName", "MiddleName", "LastName", "Suffix"), person_name)},
    "Opportunity": {"Expected_Revenue__c": (("Amount", "Probability"), expected_revenue)},
}


def compute(object_name: str, values: dict) -> None:
    """Set every computed field of `object_name` in `values` (field -> value) from its inputs."""
    for name, (inputs, fn) in DERIVED.get(object_name, {}).items():
        values[name] = fn(*(values.get(i) for i in inputs))


def recompute(object_name: str, column: dict[str, int], row: list) -> None:
    """The same over a stored row (a list in storage order; `column` maps field names to positions)."""
    for name, (inputs, fn) in DERIVED.get(object_name, {}).items():
        if name in column:
            row[column[name]] = fn(*(row[column[i]] for i in inputs))
