#!/usr/bin/env python3
"""Cross-checks the protobuf golden fixtures with an independent implementation.

For every JSON fixture under crates/resourcelease/fixtures/v*/, this script
builds the protobuf message from the JSON with Google's Python protobuf
runtime (the .proto compiled by grpcio-tools' protoc, not by our build),
following the reference mapper's rules (reference §1.9), serializes it
deterministically and compares the bytes with the checked-in .binpb fixture.
It also decodes each fixture and checks the lease id's .NET byte order.

Usage: scripts/verify-proto-fixtures.py   (needs: pip install grpcio-tools protobuf)
"""

import base64
import datetime as dt
import importlib
import json
import pathlib
import sys
import tempfile
import uuid

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
CRATE = ROOT / "crates" / "resourcelease"
EVENT_TYPES = ["Enqueue", "LeaseGranted", "Heartbeat", "Completed", "Failed", "DrainSnapshot",
               "RestoreSnapshot", "LeaseExpired", "Requeued", "DeadLettered", "DeadLetterPurged"]


def compile_proto(out_dir):
    rc = protoc.main(["protoc", f"-I{CRATE / 'proto'}", f"--python_out={out_dir}",
                      str(CRATE / "proto" / "resource_lease_replication.proto")])
    if rc != 0:
        sys.exit(f"protoc failed with {rc}")
    sys.path.insert(0, str(out_dir))
    return importlib.import_module("resource_lease_replication_pb2")


def round_trip(ts):
    """The .NET "O" form (seven fractional digits) of an ISO timestamp."""
    head, _, offset = ts.rpartition("+")
    if "." in head:
        seconds, frac = head.split(".")
    else:
        seconds, frac = head, ""
    dt.datetime.fromisoformat(seconds)  # validates
    return f"{seconds}.{frac.ljust(7, '0')}+{offset}"


def fill_ownership(msg, o):
    msg.sequence_id = o["sequenceId"]
    msg.attempt = o["attempt"]
    msg.lease_id = uuid.UUID(o["leaseId"]).bytes_le


def fill_payload(msg, p):
    msg.resource_type = p["resourceType"]
    msg.resource_id = p["resourceId"]
    msg.partition_key = p["partitionKey"]
    msg.payload_encoding = p["payloadEncoding"]
    msg.body = base64.b64decode(p["body"])
    for k, v in (p.get("attributes") or {}).items():
        msg.attributes[k] = v
    msg.request_id = p.get("requestId") or ""


def fill_error(msg, e):
    msg.message = e["message"]
    msg.code = e.get("code") or ""


def build(pb2, doc):
    m = pb2.ResourceLeaseReplicationEventMessage()
    m.sequence_number = doc["sequenceNumber"]
    m.event_type = EVENT_TYPES.index(doc["eventType"]) + 1
    m.timestamp = round_trip(doc["timestamp"])
    m.peer_id = doc.get("peerId") or ""
    if "ownership" in doc:
        fill_ownership(m.ownership, doc["ownership"])
    if "payload" in doc:
        fill_payload(m.payload, doc["payload"])
    if "error" in doc:
        fill_error(m.error, doc["error"])
    for k, v in doc["metadata"].items():
        m.metadata[k] = v
    if "schemaVersion" in doc:
        m.schema_version = doc["schemaVersion"]
        m.stream_id = doc.get("streamId") or ""
        m.node_id = doc.get("nodeId") or ""
        for item in doc.get("items", []):
            i = m.items.add()
            fill_payload(i.payload, item["payload"])
            i.attempt = item["attempt"]
            i.enqueued_at = round_trip(item["enqueuedAt"])
            if "lastError" in item:
                fill_error(i.last_error, item["lastError"])
            i.sequence_id = item["sequenceId"]
            if "lastOwnershipToken" in item:
                fill_ownership(i.last_ownership_token, item["lastOwnershipToken"])
    return m


def main():
    with tempfile.TemporaryDirectory() as tmp:
        pb2 = compile_proto(tmp)
        checked = 0
        for path in sorted(CRATE.glob("fixtures/v*/*.json")):
            doc = json.loads(path.read_text())
            want = build(pb2, doc).SerializeToString(deterministic=True)
            got = path.with_suffix(".binpb").read_bytes()
            if want != got:
                sys.exit(f"{path.relative_to(ROOT)}: fixture bytes differ from Google protobuf's\n"
                         f"  want {want.hex()}\n  got  {got.hex()}")
            decoded = pb2.ResourceLeaseReplicationEventMessage.FromString(got)
            if decoded.HasField("ownership"):
                lease = uuid.UUID(bytes_le=decoded.ownership.lease_id)
                if str(lease) != doc["ownership"]["leaseId"]:
                    sys.exit(f"{path}: lease id byte order is not .NET's")
            checked += 1
        if checked < 17:
            sys.exit(f"only {checked} fixtures found")
        print(f"verify-proto-fixtures: {checked} protobuf fixtures match Google protobuf")


if __name__ == "__main__":
    main()
