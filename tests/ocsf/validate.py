#!/usr/bin/env python3
"""Validates OCSF records (JSON Lines on stdin or in FILE) against the
official OCSF JSON Schema, using the `ocsf-json-schema` package.

Each record's schema is the one of its `class_uid` in the OCSF version its
`metadata.version` names, with the profiles its `metadata.profiles` lists.
Prints one line per invalid record (line number, class, field path, error)
and a summary; exits 1 if any record is invalid or a line is not JSON.
"""
import json
import sys

from jsonschema import Draft202012Validator
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

schemas = {}
validators = {}


def validator(version, class_uid, profiles):
    key = (version, class_uid, tuple(sorted(profiles)))
    if key not in validators:
        if version not in schemas:
            schemas[version] = OcsfJsonSchemaEmbedded(get_ocsf_schema(version=version))
        s = schemas[version]
        name = s.lookup_class_name_from_uid(class_uid=class_uid)
        validators[key] = Draft202012Validator(s.get_class_schema(class_name=name, profiles=list(profiles)))
    return validators[key]


def main():
    source = open(sys.argv[1]) if len(sys.argv) > 1 else sys.stdin
    counts = {}
    bad = 0
    for n, line in enumerate(source, 1):
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            print(f"line {n}: not JSON: {e}")
            bad += 1
            continue
        meta = record.get("metadata", {})
        uid = record.get("class_uid")
        v = validator(meta.get("version", "?"), uid, meta.get("profiles", []))
        errors = sorted(v.iter_errors(record), key=lambda e: list(e.path))
        counts[uid] = counts.get(uid, 0) + 1
        for e in errors[:5]:
            path = "/".join(str(p) for p in e.path) or "(record)"
            print(f"line {n}: class {uid}: {path}: {e.message[:300]}")
        if errors:
            bad += 1
    summary = ", ".join(f"{c} x{k}" for k, c in sorted(counts.items()))
    print(f"validated {sum(counts.values())} records ({summary}); {bad} invalid")
    sys.exit(1 if bad or not counts else 0)


if __name__ == "__main__":
    main()
