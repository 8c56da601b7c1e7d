"""Objects outside the default entity selection: Task (standard-shaped), Shipment__c (custom), AccountShare
(no SystemModstamp: LastModifiedDate only) and AccountHistory (neither: CreatedDate only), their fields and their
seeded record bodies.

Both are served by describe, REST and Bulk like the other objects, but publish no change event unless a client
selects them for Change Data Capture (`--cdc-objects`, `PUT /__sim/cdc`: cdc.py): an entity an admin has not
selected publishes nothing and its `/data/<Object>ChangeEvent` topic does not exist (docs/salesforce-coverage.md
§2, §5; docs/pubsub-cdc.md §4, "Topic unknown, or CDC not enabled for the entity"). A client keeps
them current by polling (SystemModstamp keyset, getUpdated, getDeleted: rest_replication.py).

Task's fields follow the Object Reference ("Task", https://developer.salesforce.com/docs/atlas.en-us.object_reference.meta/object_reference/sforce_api_objects_task.htm):
WhoId points at a person (Contact here; the org has no Lead) and WhatId at a record (Account or Opportunity here:
a polymorphic reference, `polymorphicForeignKey` in describe). Fields of Task this org leaves out (OwnerId,
IsClosed, recurrence…) are not needed to poll it.
"""

from __future__ import annotations

import datetime as dt

from .ids import make_id
from .schema import FieldSpec

TASK_STATUS = ("Not Started", "In Progress", "Completed", "Waiting on someone else", "Deferred")
TASK_PRIORITY = ("High", "Normal", "Low")
TASK_TYPES = ("Call", "Email", "Meeting", "Other")
SUBJECTS = ("Call", "Send Letter", "Send Quote", "Email: “Renewal”, Q3", "Follow up, \"urgent\"", "Réunion 日本")
CARRIERS = ("DHL", "UPS", "FedEx", "La Poste")


def _task_fields() -> list[FieldSpec]:
    return [
        FieldSpec("Subject", "string", "Subject", length=255),
        FieldSpec("Status", "picklist", "Status", length=255, nillable=False, picklist=TASK_STATUS),
        FieldSpec("Priority", "picklist", "Priority", length=255, nillable=False, picklist=TASK_PRIORITY),
        FieldSpec("Type", "picklist", "Type", length=255, picklist=TASK_TYPES),
        FieldSpec("ActivityDate", "date", "Due Date Only"),
        FieldSpec("WhoId", "reference", "Name ID", length=18, reference_to=("Contact",), relationship_name="Who"),
        FieldSpec("WhatId", "reference", "Related To ID", length=18, reference_to=("Account", "Opportunity"),
                  relationship_name="What"),
        FieldSpec("Description", "textarea", "Description", length=32000, extra_type_info="plaintextarea"),
    ]


def _shipment_fields() -> list[FieldSpec]:
    return [
        FieldSpec("Name", "string", "Shipment Number", length=80, nillable=False),
        FieldSpec("Account__c", "reference", "Account", length=18, custom=True, reference_to=("Account",),
                  relationship_name="Account__r"),
        FieldSpec("Carrier__c", "picklist", "Carrier", length=255, custom=True, picklist=CARRIERS),
        FieldSpec("Tracking_Number__c", "string", "Tracking Number", length=40, custom=True),
        FieldSpec("Weight_Kg__c", "double", "Weight (kg)", precision=10, scale=3, custom=True),
        FieldSpec("Shipped_On__c", "date", "Shipped On", custom=True),
        FieldSpec("Delivered__c", "boolean", "Delivered", nillable=False, custom=True),
        FieldSpec("Notes__c", "textarea", "Notes", length=255, custom=True),
    ]


ACCESS = ("Read", "Edit")  # "All" is the owner's, not valid for create or update
SUB_ACCESS = ("None", "Read", "Edit")
ROW_CAUSES = ("Manual", "Owner", "Rule", "ImplicitChild", "Team")
HISTORY_FIELDS = ("Name", "Phone", "Industry", "created", "Owner")


def _share_fields() -> list[FieldSpec]:
    """AccountShare (Object Reference, "AccountShare",
    https://developer.salesforce.com/docs/atlas.en-us.object_reference.meta/object_reference/sforce_api_objects_accountshare.htm):
    no SystemModstamp and no CreatedDate, only LastModifiedDate (schema.FEWER_AUDIT_FIELDS). UserOrGroupId points at
    a User or Group, objects this org does not serve."""
    return [
        FieldSpec("AccountId", "reference", "Account ID", length=18, nillable=False, reference_to=("Account",),
                  relationship_name="Account"),
        FieldSpec("UserOrGroupId", "reference", "User or Group ID", length=18, nillable=False,
                  reference_to=("Group", "User")),
        FieldSpec("AccountAccessLevel", "picklist", "Account Access", length=40, nillable=False, picklist=ACCESS),
        FieldSpec("OpportunityAccessLevel", "picklist", "Opportunity Access", length=40, nillable=False,
                  picklist=SUB_ACCESS),
        FieldSpec("CaseAccessLevel", "picklist", "Case Access", length=40, nillable=False, picklist=SUB_ACCESS),
        FieldSpec("ContactAccessLevel", "picklist", "Contact Access", length=40, picklist=SUB_ACCESS),
        FieldSpec("RowCause", "picklist", "Row Cause", length=40, picklist=ROW_CAUSES),
    ]


def _history_fields() -> list[FieldSpec]:
    """AccountHistory (Object Reference, "AccountHistory",
    https://developer.salesforce.com/docs/atlas.en-us.object_reference.meta/object_reference/sforce_api_objects_accounthistory.htm):
    a tracked field's change, never edited; no SystemModstamp and no LastModifiedDate, only CreatedDate
    (schema.FEWER_AUDIT_FIELDS). OldValue and NewValue are anyType in Salesforce; served here as strings (their
    values are text, and a replicator column for anyType is text too)."""
    return [
        FieldSpec("AccountId", "reference", "Account ID", length=18, nillable=False, reference_to=("Account",),
                  relationship_name="Account"),
        FieldSpec("Field", "picklist", "Changed Field", length=255, nillable=False, picklist=HISTORY_FIELDS),
        FieldSpec("DataType", "picklist", "Data Type", length=40, picklist=("Text", "Phone", "Picklist")),
        FieldSpec("OldValue", "string", "Old Value", length=255),
        FieldSpec("NewValue", "string", "New Value", length=255),
    ]


# Same shape as schema.OBJECTS: API name, label, plural label, key prefix (Task's is Salesforce's), custom, fields.
POLLED_OBJECTS = (
    ("Task", "Task", "Tasks", "00T", False, _task_fields),
    ("Shipment__c", "Shipment", "Shipments", "a2S", True, _shipment_fields),
    ("AccountShare", "Account Share", "Account Share", "00r", False, _share_fields),
    ("AccountHistory", "Account History", "Account History", "017", False, _history_fields),
)


def _task(h: int, i: int, n_accounts: int) -> dict:
    who = (h >> 30) % n_accounts if n_accounts and (h >> 50) % 4 else None
    what = (h >> 60) % n_accounts if n_accounts and (h >> 90) % 5 else None
    what_prefix = "001" if (h >> 95) & 1 else "006"
    return {
        "Subject": f"{SUBJECTS[h % len(SUBJECTS)]} #{i}",
        "Status": TASK_STATUS[(h >> 4) % len(TASK_STATUS)],
        "Priority": TASK_PRIORITY[(h >> 8) % len(TASK_PRIORITY)],
        "Type": TASK_TYPES[(h >> 12) % len(TASK_TYPES)] if (h >> 16) % 6 else None,
        "ActivityDate": None if (h >> 20) % 7 == 0 else _day(h >> 100),
        "WhoId": make_id("003", who + 1) if who is not None else None,
        "WhatId": make_id(what_prefix, what + 1) if what is not None else None,
        "Description": None if (h >> 130) % 3 else f"Notes for task {i}, \"quoted\"\nsecond line — é",
    }


def _shipment(h: int, i: int, n_accounts: int) -> dict:
    acct = (h >> 30) % n_accounts if n_accounts else None
    return {
        "Name": f"SHP-{i + 1:07d}",
        "Account__c": make_id("001", acct + 1) if acct is not None else None,
        "Carrier__c": CARRIERS[(h >> 60) % len(CARRIERS)],
        "Tracking_Number__c": f"1Z{(h >> 70) % 10**12:012d}" if (h >> 110) % 8 else None,
        "Weight_Kg__c": ((h >> 120) % 10**6) / 1000,
        "Shipped_On__c": _day(h >> 150),
        "Delivered__c": bool((h >> 180) & 1),
        "Notes__c": None if (h >> 190) % 4 else f"Leave at door, \"gate\" {i}\nFragile",
    }


def _share(h: int, i: int, n_accounts: int) -> dict:
    return {
        "AccountId": make_id("001", (h >> 30) % max(n_accounts, 1) + 1),
        "UserOrGroupId": make_id("005" if h & 1 else "00G", (h >> 40) % 50 + 1),
        "AccountAccessLevel": ACCESS[(h >> 2) % 2],
        "OpportunityAccessLevel": SUB_ACCESS[(h >> 4) % 3],
        "CaseAccessLevel": SUB_ACCESS[(h >> 6) % 3],
        "ContactAccessLevel": SUB_ACCESS[(h >> 8) % 3] if (h >> 10) % 5 else None,
        "RowCause": ROW_CAUSES[(h >> 12) % len(ROW_CAUSES)],
    }


def _history(h: int, i: int, n_accounts: int) -> dict:
    field = HISTORY_FIELDS[(h >> 2) % len(HISTORY_FIELDS)]
    created = field == "created"
    return {
        "AccountId": make_id("001", (h >> 30) % max(n_accounts, 1) + 1),
        "Field": field,
        "DataType": None if created else ("Phone" if field == "Phone" else "Text"),
        "OldValue": None if created or (h >> 8) % 4 == 0 else f"old {field} {i}",
        "NewValue": None if created else f"new {field} {i}, \"quoted\"",
    }


def _day(h: int) -> dt.date:
    return dt.date(2024, 1, 1) + dt.timedelta(days=h % 1096)


BODIES = {"Task": _task, "Shipment__c": _shipment, "AccountShare": _share, "AccountHistory": _history}
