"""The simulated org's metadata: objects, fields, and their describe / describeGlobal JSON
(docs/bulk-rest-oauth.md §3.1, §3.2).

Field order here is the column order of stored rows (see generator.py) and of describe `fields[]`.
Compound fields (type `address`) are listed in describe but hold no stored value: their components do.
Contact's `Name` is a compound too (its components Salutation, FirstName, MiddleName, LastName and Suffix carry
`compoundFieldName` "Name"), but one with a stored, read-only string value the org computes (derived.py); change
events carry it as a `PersonName` record (avro.py, docs/pubsub-cdc.md §5).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# soapType per field type (partner WSDL, docs/bulk-rest-oauth.md §3.2).
SOAP_TYPES = {
    "id": "tns:ID", "reference": "tns:ID", "string": "xsd:string", "textarea": "xsd:string",
    "picklist": "xsd:string", "multipicklist": "xsd:string", "email": "xsd:string", "phone": "xsd:string",
    "url": "xsd:string", "boolean": "xsd:boolean", "int": "xsd:int", "double": "xsd:double",
    "currency": "xsd:double", "percent": "xsd:double", "date": "xsd:date", "datetime": "xsd:dateTime",
    "time": "xsd:time", "address": "tns:address",
}
TEXT_TYPES = {"id", "reference", "string", "textarea", "picklist", "multipicklist", "email", "phone", "url"}
NUMBER_TYPES = {"int", "double", "currency", "percent"}
LONG_TEXT_LENGTH = 131072  # the largest Long Text Area Salesforce allows
NOT_AGGREGATABLE = {"textarea", "multipicklist", "address"}  # also not sortable unless 255 characters or less
NOT_GROUPABLE = {"textarea", "multipicklist", "double", "currency", "percent", "datetime", "address"}
# describe `fields[]` attributes with the same value on every field of this org (no masks, encryption,
# dependent picklists or polymorphic references here; calculatedFormula is the field's own).
DESCRIBE_CONSTANTS = {
    "autoNumber": False, "calculatedFormula": None, "cascadeDelete": False, "caseSensitive": False,
    "controllerName": None, "defaultValueFormula": None, "dependentPicklist": False, "deprecatedAndHidden": False,
    "encrypted": False, "formulaTreatNullNumberAsZero": False, "highScaleNumber": False, "htmlFormatted": False,
    "inlineHelpText": None, "mask": None, "maskType": None, "namePointing": False, "polymorphicForeignKey": False,
    "queryByDistance": False, "referenceTargetField": None, "relationshipOrder": None, "restrictedDelete": False,
    "restrictedPicklist": False, "searchPrefilterable": False, "writeRequiresMasterRead": False,
}


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: str
    label: str = ""
    length: int = 0
    precision: int = 0
    scale: int = 0
    digits: int = 0
    nillable: bool = True
    custom: bool = False
    reference_to: tuple[str, ...] = ()
    relationship_name: str | None = None
    picklist: tuple[str, ...] = ()
    extra_type_info: str | None = None
    external_id: bool = False
    unique: bool = False
    id_lookup: bool = False
    compound_field_name: str | None = None
    calculated: bool = False
    system: bool = False  # audit/system fields: not createable/updateable
    read_only: bool = False  # computed by the org, not a formula (Contact.Name): not createable/updateable
    formula: str | None = None  # calculated fields: describe's calculatedFormula

    @property
    def is_compound(self) -> bool:
        return self.type == "address"

    @property
    def writable(self) -> bool:
        """Createable and updateable: a value a client (or the traffic generator) may set."""
        return not (self.system or self.calculated or self.read_only or self.type == "id" or self.is_compound)

    def describe(self) -> dict:
        """The describe `fields[]` item (docs/bulk-rest-oauth.md §3.2), keys in alphabetical order
        like Salesforce's."""
        doc = {**DESCRIBE_CONSTANTS, **self._identity(), **self._typing(), **self._capabilities()}
        return dict(sorted(doc.items()))

    def _identity(self) -> dict:
        """What the field is: names, keys, references, picklist values."""
        return {
            "calculated": self.calculated,
            "calculatedFormula": self.formula,
            "compoundFieldName": self.compound_field_name,
            "custom": self.custom,
            "externalId": self.external_id,
            "extraTypeInfo": self.extra_type_info,
            "idLookup": self.id_lookup or self.type == "id",
            "label": self.label or self.name,
            "name": self.name,
            "nameField": self.name == "Name",
            # a reference to several objects (Task.WhatId) is polymorphic ("Field", SOAP API Developer Guide,
            # https://developer.salesforce.com/docs/atlas.en-us.api.meta/api/sforce_api_calls_describesobjects_describesobjectresult.htm)
            "polymorphicForeignKey": len(self.reference_to) > 1,
            "picklistValues": [{"active": True, "defaultValue": False, "label": v, "validFor": None, "value": v}
                               for v in self.picklist],
            "referenceTo": list(self.reference_to),
            "relationshipName": self.relationship_name,
            "unique": self.unique,
        }

    def _typing(self) -> dict:
        """Its type, size, nullability and default."""
        return {
            "byteLength": self.length * 3 if self.type in TEXT_TYPES else 0,
            "defaultValue": False if self.type == "boolean" else None,
            "defaultedOnCreate": self.type in ("boolean", "id") or self.system,
            "digits": self.digits,
            "length": self.length,
            "nillable": self.nillable,
            "precision": self.precision,
            "scale": self.scale,
            "soapType": SOAP_TYPES[self.type],
            "type": self.type,
        }

    def _capabilities(self) -> dict:
        """What a client may do with it: write it, filter, group, sort or aggregate by it."""
        editable = self.writable
        short = self.length <= 255
        return {
            "aggregatable": self.type not in NOT_AGGREGATABLE,
            "createable": editable,
            "filterable": self.type not in ("textarea", "address") or short,
            "groupable": self.type not in NOT_GROUPABLE,
            "permissionable": self.nillable and not self.system,
            "sortable": self.type not in NOT_AGGREGATABLE or short,
            "updateable": editable,
        }


@dataclass
class ObjectSpec:
    name: str
    label: str
    label_plural: str
    key_prefix: str
    custom: bool
    fields: list[FieldSpec]
    index: dict[str, int] = field(default_factory=dict)  # lower-case name -> position in `fields`

    def __post_init__(self) -> None:
        self.index = {f.name.lower(): i for i, f in enumerate(self.fields)}

    def field(self, name: str) -> FieldSpec | None:
        i = self.index.get(name.lower())
        return None if i is None else self.fields[i]

    def position(self, name: str) -> int | None:
        return self.index.get(name.lower())

    def components(self, compound: str) -> list[FieldSpec]:
        """The fields whose `compoundFieldName` is `compound`, in describe order."""
        return [f for f in self.fields if f.compound_field_name == compound]

    @property
    def stored_fields(self) -> list[FieldSpec]:
        """Every field that has a value of its own (all but compound fields), in row order."""
        return [f for f in self.fields if not f.is_compound]

    def describe_global_entry(self, version: str) -> dict:
        """One `sobjects[]` entry of describeGlobal (docs/bulk-rest-oauth.md §3.1)."""
        base = f"/services/data/v{version}/sobjects/{self.name}"
        return {
            "activateable": False, "createable": True, "custom": self.custom, "customSetting": False,
            "deepCloneable": False, "deletable": True, "deprecatedAndHidden": False, "feedEnabled": False,
            "hasSubtypes": False, "isInterface": False, "isSubtype": False, "keyPrefix": self.key_prefix,
            "label": self.label, "labelPlural": self.label_plural, "layoutable": True, "mergeable": False,
            "mruEnabled": True, "name": self.name, "queryable": True, "replicateable": True,
            "retrieveable": True, "searchable": True, "triggerable": True, "undeletable": True,
            "updateable": True,
            "urls": {"sobject": base, "describe": base + "/describe", "rowTemplate": base + "/{ID}"},
        }

    def describe(self, version: str, children: list[dict]) -> dict:
        """The sObject describe document (docs/bulk-rest-oauth.md §3.1)."""
        doc = self.describe_global_entry(version)
        doc.update({
            "actionOverrides": [], "childRelationships": children, "compactLayoutable": True,
            "defaultImplementation": None, "extendedBy": None, "extendsInterfaces": None,
            "fields": [f.describe() for f in self.fields], "implementedBy": None, "implementsInterfaces": None,
            "listviewable": None, "lookupLayoutable": None, "namedLayoutInfos": [], "networkScopeFieldName": None,
            "recordTypeInfos": [], "searchLayoutable": True, "supportedScopes": [], "sobjectDescribeOption": "FULL",
        })
        return doc


AUDIT_FIELDS = ("CreatedDate", "LastModifiedDate", "SystemModstamp")
# Standard objects with fewer audit datetimes than the others, as the Object Reference documents them: a share
# object has LastModifiedDate only ("AccountShare",
# https://developer.salesforce.com/docs/atlas.en-us.object_reference.meta/object_reference/sforce_api_objects_accountshare.htm),
# a field history object CreatedDate only ("AccountHistory",
# https://developer.salesforce.com/docs/atlas.en-us.object_reference.meta/object_reference/sforce_api_objects_accounthistory.htm).
# Neither has SystemModstamp (polled.py).
FEWER_AUDIT_FIELDS = {"AccountShare": ("LastModifiedDate",), "AccountHistory": ("CreatedDate",)}


def _common(own: list[FieldSpec], activity: bool = False, audit_fields: tuple[str, ...] = AUDIT_FIELDS,
            ) -> list[FieldSpec]:
    """Id and IsDeleted first, the object's own fields, then the audit datetimes (`audit_fields` of them); with
    `activity`, also LastActivityDate and LastViewedDate (SILENT_FIELDS), read-only fields that change without an
    event."""
    head = [
        FieldSpec("Id", "id", "Record ID", length=18, nillable=False, system=True),
        FieldSpec("IsDeleted", "boolean", "Deleted", nillable=False, system=True),
    ]
    audit = [f for f in (
        FieldSpec("CreatedDate", "datetime", "Created Date", nillable=False, system=True),
        FieldSpec("LastModifiedDate", "datetime", "Last Modified Date", nillable=False, system=True),
        FieldSpec("SystemModstamp", "datetime", "System Modstamp", nillable=False, system=True),
    ) if f.name in audit_fields]
    if activity:
        audit += [FieldSpec("LastActivityDate", "date", "Last Activity", system=True),
                  FieldSpec("LastViewedDate", "datetime", "Last Viewed Date", system=True)]
    return head + own + audit


def _address(prefix: str) -> list[FieldSpec]:
    compound = f"{prefix}Address"
    return [
        FieldSpec(f"{prefix}Street", "textarea", f"{prefix} Street", length=255, compound_field_name=compound),
        FieldSpec(f"{prefix}City", "string", f"{prefix} City", length=40, compound_field_name=compound),
        FieldSpec(f"{prefix}State", "string", f"{prefix} State/Province", length=80, compound_field_name=compound),
        FieldSpec(f"{prefix}PostalCode", "string", f"{prefix} Zip/Postal Code", length=20,
                  compound_field_name=compound),
        FieldSpec(f"{prefix}Country", "string", f"{prefix} Country", length=80, compound_field_name=compound),
        FieldSpec(f"{prefix}Latitude", "double", f"{prefix} Latitude", precision=18, scale=15,
                  compound_field_name=compound),
        FieldSpec(f"{prefix}Longitude", "double", f"{prefix} Longitude", precision=18, scale=15,
                  compound_field_name=compound),
        FieldSpec(compound, "address", f"{prefix} Address"),
    ]


INDUSTRIES = ("Agriculture", "Banking", "Chemicals", "Education", "Energy", "Finance", "Retail", "Technology")
REGIONS = ("EMEA", "APAC", "NA", "LATAM")
STAGES = ("Prospecting", "Qualification", "Proposal", "Negotiation", "Closed Won", "Closed Lost")
INVOICE_STATUS = ("Draft", "Sent", "Paid", "Void")
SALUTATIONS = ("Mr.", "Ms.", "Mrs.", "Dr.", "Prof.")
HOSTILE_FIELD = 'Bad"Name;DROP__c'


WIDE_TYPES = ("string", "double", "int", "boolean", "date")
WIDE_FIELDS = [(f"F{k:03d}__c", WIDE_TYPES[k % len(WIDE_TYPES)]) for k in range(199)]


def _wide_fields() -> list[FieldSpec]:
    """Wide__c: Name and 199 custom fields of mixed types, about 4 KB a row as CSV (the bench's wide rows)."""
    out = [FieldSpec("Name", "string", "Wide Name", length=80, nillable=False)]
    for name, kind in WIDE_FIELDS:
        if kind == "string":
            out.append(FieldSpec(name, "string", name, length=80, custom=True))
        elif kind == "double":
            out.append(FieldSpec(name, "double", name, precision=16, scale=4, custom=True))
        elif kind == "int":
            out.append(FieldSpec(name, "int", name, digits=9, custom=True))
        elif kind == "boolean":
            out.append(FieldSpec(name, "boolean", name, nillable=False, custom=True))
        else:
            out.append(FieldSpec(name, "date", name, custom=True))
    return out


def _account_fields() -> list[FieldSpec]:
    return [
        FieldSpec("Name", "string", "Account Name", length=255, nillable=False),
        FieldSpec("Type", "picklist", "Account Type", length=255, picklist=("Prospect", "Customer", "Partner")),
        FieldSpec("Industry", "picklist", "Industry", length=255, picklist=INDUSTRIES),
        FieldSpec("AccountNumber", "string", "Account Number", length=40),
        FieldSpec("Phone", "phone", "Account Phone", length=40),
        FieldSpec("Website", "url", "Website", length=255),
        FieldSpec("AnnualRevenue", "currency", "Annual Revenue", precision=18, scale=0),
        FieldSpec("NumberOfEmployees", "int", "Employees", digits=8),
        FieldSpec("Description", "textarea", "Account Description", length=32000, extra_type_info="plaintextarea"),
        *_address("Billing"),
        FieldSpec("Regions__c", "multipicklist", "Regions", length=4099, custom=True, picklist=REGIONS),
        FieldSpec("Active__c", "boolean", "Active", nillable=False, custom=True),
    ]


def _account_id() -> FieldSpec:
    return FieldSpec("AccountId", "reference", "Account ID", length=18, reference_to=("Account",),
                     relationship_name="Account")


def _person_name() -> list[FieldSpec]:
    """Contact's name fields in describe order. `extraTypeInfo` "personname" and the Salutation picklist values
    (Salesforce's defaults) are this simulator's choice, as live orgs' describe shows them; the Avro record also
    has InformalName (tests/salesforce/data/AccountChangeEvent.v1.avsc), which this org never sets."""
    def part(name: str, label: str, length: int, **extra) -> FieldSpec:
        return FieldSpec(name, extra.pop("type", "string"), label, length=length, compound_field_name="Name",
                         extra_type_info="personname", **extra)
    return [
        part("LastName", "Last Name", 80, nillable=False),
        part("FirstName", "First Name", 40),
        part("Salutation", "Salutation", 40, type="picklist", picklist=SALUTATIONS),
        part("MiddleName", "Middle Name", 40),
        part("Suffix", "Suffix", 40),
        FieldSpec("Name", "string", "Full Name", length=121, nillable=False, read_only=True,
                  extra_type_info="personname"),
    ]


def _contact_fields() -> list[FieldSpec]:
    return [
        _account_id(),
        *_person_name(),
        *_address("Other"),
        *_address("Mailing"),
        FieldSpec("Email", "email", "Email", length=80),
        FieldSpec("Phone", "phone", "Business Phone", length=40),
        FieldSpec("Birthdate", "date", "Birthdate"),
        FieldSpec("HasOptedOutOfEmail", "boolean", "Email Opt Out", nillable=False),
        FieldSpec("Notes__c", "textarea", "Notes", length=LONG_TEXT_LENGTH, custom=True,
                  extra_type_info="plaintextarea"),
    ]


def _opportunity_fields() -> list[FieldSpec]:
    return [
        FieldSpec("Name", "string", "Name", length=120, nillable=False),
        _account_id(),
        FieldSpec("StageName", "picklist", "Stage", length=255, nillable=False, picklist=STAGES),
        FieldSpec("Amount", "currency", "Amount", precision=18, scale=2),
        FieldSpec("Probability", "percent", "Probability (%)", precision=3, scale=0),
        FieldSpec("CloseDate", "date", "Close Date", nillable=False),
        FieldSpec("TotalOpportunityQuantity", "double", "Quantity", precision=18, scale=2),
        FieldSpec("NextStep", "string", "Next Step", length=255),
        FieldSpec("Follow_Up_Time__c", "time", "Follow-up Time", custom=True),
        # A formula (derived.py computes it): Salesforce formulas read a percent as a fraction (25% is 0.25), so
        # the API value is Amount x Probability / 100.
        FieldSpec("Expected_Revenue__c", "currency", "Expected Revenue", precision=18, scale=2, custom=True,
                  calculated=True, formula="Amount * Probability"),
    ]


def _invoice_fields() -> list[FieldSpec]:
    return [
        FieldSpec("Name", "string", "Invoice Number", length=80, nillable=False),
        FieldSpec("External_Id__c", "string", "External Id", length=64, custom=True, external_id=True,
                  unique=True, id_lookup=True),
        FieldSpec("Account__c", "reference", "Account", length=18, custom=True, reference_to=("Account",),
                  relationship_name="Account__r"),
        FieldSpec("Amount__c", "currency", "Amount", precision=16, scale=2, custom=True),
        FieldSpec("Tax_Rate__c", "percent", "Tax Rate", precision=5, scale=2, custom=True),
        FieldSpec("Quantity__c", "double", "Quantity", precision=12, scale=3, custom=True),
        FieldSpec("Status__c", "picklist", "Status", length=255, custom=True, picklist=INVOICE_STATUS),
        FieldSpec("Tags__c", "multipicklist", "Tags", length=4099, custom=True, picklist=REGIONS),
        FieldSpec("Paid__c", "boolean", "Paid", nillable=False, custom=True),
        FieldSpec("Due_Date__c", "date", "Due Date", custom=True),
        FieldSpec("Paid_At__c", "datetime", "Paid At", custom=True),
        FieldSpec("Contact_Email__c", "email", "Contact Email", length=80, custom=True),
        FieldSpec("Portal_Url__c", "url", "Portal URL", length=255, custom=True),
        FieldSpec("Memo__c", "textarea", "Memo", length=255, custom=True),
        FieldSpec("Body__c", "textarea", "Body", length=LONG_TEXT_LENGTH, custom=True,
                  extra_type_info="plaintextarea"),
        # External ID but not Unique: values repeat, so no client may key a table by it ("Field", SOAP API
        # Developer Guide, `externalId`, `idLookup`, `unique`: https://developer.salesforce.com/docs/
        # atlas.en-us.api.meta/api/sforce_api_calls_describesobjects_describesobjectresult.htm).
        FieldSpec("Legacy_Code__c", "string", "Legacy Code", length=20, custom=True, external_id=True,
                  id_lookup=True),
    ]


# The org's objects: API name, label, plural label, key prefix, custom, and the object's own fields.
OBJECTS = (
    ("Account", "Account", "Accounts", "001", False, _account_fields),
    ("Contact", "Contact", "Contacts", "003", False, _contact_fields),
    ("Opportunity", "Opportunity", "Opportunities", "006", False, _opportunity_fields),
    ("Invoice__c", "Invoice", "Invoices", "a0X", True, _invoice_fields),
)
WIDE_OBJECT = ("Wide__c", "Wide", "Wides", "a1W", True, _wide_fields)
# Objects with LastActivityDate and LastViewedDate. Both change without a change event (the captured Account
# schema, tests/salesforce/data/AccountChangeEvent.v1.avsc, has neither; docs/salesforce-coverage.md §2): viewing a
# record or logging an activity does not publish one.
ACTIVITY_OBJECTS = ("Account", "Contact", "Opportunity")
SILENT_FIELDS = ("LastActivityDate", "LastViewedDate")


def build_objects(hostile_field: bool = False, wide_object: bool = False, more: tuple = ()) -> dict[str, ObjectSpec]:
    """The org's objects by API name. `hostile_field` adds a custom field whose name needs quoting to
    Account; `wide_object` adds Wide__c (200 fields) for benchmarks; `more` adds objects given in OBJECTS' shape
    (polled.POLLED_OBJECTS)."""
    specs = {}
    for name, label, plural, prefix, custom, own_fields in OBJECTS + ((WIDE_OBJECT,) if wide_object else ()) + more:
        own = own_fields()
        if hostile_field and name == "Account":
            own.append(FieldSpec(HOSTILE_FIELD, "string", "Hostile name", length=80, custom=True))
        specs[name] = ObjectSpec(name, label, plural, prefix, custom, _common(
            own, name in ACTIVITY_OBJECTS, FEWER_AUDIT_FIELDS.get(name, AUDIT_FIELDS)))
    return specs


def child_relationships(objects: dict[str, ObjectSpec], parent: str) -> list[dict]:
    """`childRelationships` of `parent`: every reference field elsewhere that points at it."""
    out = []
    for spec in objects.values():
        for f in spec.fields:
            if parent in f.reference_to:
                plural = spec.label_plural.replace(" ", "")
                out.append({
                    "cascadeDelete": False, "childSObject": spec.name, "deprecatedAndHidden": False,
                    "field": f.name, "junctionIdListNames": [], "junctionReferenceTo": [],
                    "relationshipName": plural if not spec.custom else plural + "__r",
                    "restrictedDelete": False,
                })
    return out
