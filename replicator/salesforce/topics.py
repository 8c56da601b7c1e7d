"""Change Data Capture topics, and what a change event's header says about the records it names.

Owns the Salesforce facts the stream acts on without decoding a body: which topic carries an object's change
events, which change types are gap events (fetch the record again) or an overflow (the records are unknown),
and the placeholder record ids that name no record.
"""

from __future__ import annotations

# Change types (the `changeType` enum of ChangeEventHeader). Gap events carry a header only; the subscriber
# fetches the records by id. "Gap Events", Change Data Capture Developer Guide:
# https://developer.salesforce.com/docs/atlas.en-us.change_data_capture.meta/change_data_capture/cdc_other_events_gap.htm
# (docs/pubsub-cdc.md §7).
GAP_CREATE = "GAP_CREATE"
GAP_UPDATE = "GAP_UPDATE"
GAP_DELETE = "GAP_DELETE"
GAP_UNDELETE = "GAP_UNDELETE"
GAP_TYPES = frozenset({GAP_CREATE, GAP_UPDATE, GAP_DELETE, GAP_UNDELETE})
# More than 100,000 changes in one transaction: the rest become one GAP_OVERFLOW per object, naming no record.
# "Overflow Events": https://developer.salesforce.com/docs/atlas.en-us.change_data_capture.meta/change_data_capture/cdc_other_events_overflow.htm
GAP_OVERFLOW = "GAP_OVERFLOW"

# Change types whose body carries the whole record ("Change Event Body Fields":
# https://developer.salesforce.com/docs/atlas.en-us.change_data_capture.meta/change_data_capture/cdc_event_fields_body.htm,
# docs/pubsub-cdc.md §5 "Body contents per change type").
FULL_BODY_TYPES = frozenset({"CREATE", "UNDELETE"})

# Fields a change event never carries although they are on the record: IsDeleted and SystemModstamp (the stream
# sets them from the change itself), formula fields, and "any field whose value isn't on the record and is derived
# from another record ... Examples of fields with derived values include LastActivityDate and PhotoUrl"
# ("StandardObjectNameChangeEvent", Object Reference:
# https://developer.salesforce.com/docs/atlas.en-us.object_reference.meta/object_reference/sforce_api_associated_objects_change_event.htm;
# docs/salesforce-coverage.md §2). LastViewedDate and LastReferencedDate are derived from the user's recent items
# the same way; the captured AccountChangeEvent schemas (tests/salesforce/data/) hold none of them. A compound
# name (Contact.Name, computed from FirstName, LastName, …) is derived too: events carry its components only.
EVENTLESS_FIELDS = frozenset({"LastActivityDate", "LastViewedDate", "LastReferencedDate", "PhotoUrl"})

# The overflow event's `recordIds` is always this "empty record ID" ("Overflow Events", above).
EMPTY_RECORD_ID = "000000000000000AAA"
# A field type conversion that loses data gives a wildcard record id such as `001*`: every record of the
# object whose id starts with the key prefix ("ChangeEventHeader Fields", `recordIds`:
# https://developer.salesforce.com/docs/atlas.en-us.change_data_capture.meta/change_data_capture/cdc_event_fields_header.htm,
# docs/pubsub-cdc.md §5).
WILDCARD = "*"


def topic_for(object_name: str) -> str:
    """The object's change event channel: `/data/AccountChangeEvent`; a custom object drops the `c` of `__c`:
    `Invoice__c` → `/data/Invoice__ChangeEvent`. "Subscription Channels", Change Data Capture Developer Guide:
    https://developer.salesforce.com/docs/atlas.en-us.change_data_capture.meta/change_data_capture/cdc_subscribe_channels.htm
    (docs/pubsub-cdc.md §5)."""
    base = object_name[:-1] if object_name.endswith("__c") else object_name
    return f"/data/{base}ChangeEvent"


def identifies_record(change_type: str, record_id: str) -> bool:
    """False when the event cannot be healed record by record: a GAP_OVERFLOW, the empty record id or a
    wildcard id. Those changes are unknown per record; only reading the whole object again recovers them."""
    return change_type != GAP_OVERFLOW and record_id != EMPTY_RECORD_ID and WILDCARD not in record_id
