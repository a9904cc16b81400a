#!/usr/bin/env python3
"""A fake Google BigQuery v2 REST API and OAuth token endpoint on loopback, for devourer's tests.

- Request bodies are validated against the real BigQuery v2 discovery document shipped by
  google-api-python-client: an unknown field or a wrong JSON type is a 400, as from BigQuery.
- The token endpoint checks the RS256-signed JWT of a service account whose key this script
  generates (--write-key), and hands out bearer tokens the API then requires.
- insertAll de-duplicates rows by insertId, rejects rows with fields the table does not have or
  values of the wrong type (reason "invalid", every other row of the request "stopped", as
  BigQuery does without skipInvalidRows), and can be told to fail: per request (a status, a
  connection reset, a delay longer than the client's timeout) or for a while ("down").
- Control: POST /control {"schedule": [...], "down": bool, "poison": "text",
  "fail_table": {"table": "p/d/t", "status": 503} (every insert into that table fails),
  "fail_ratio": 0.2 (that share of inserts fails with 503, at random)};
  GET /control/state; GET /control/rows?table=T[&fields=a,b] (only those fields of each row).
"""

import argparse
import base64
import gzip
import json
import os
import random
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

import googleapiclient

DISCOVERY = json.load(
    open(
        os.path.join(
            os.path.dirname(googleapiclient.__file__),
            "discovery_cache/documents/bigquery.v2.json",
        )
    )
)
SCHEMAS = DISCOVERY["schemas"]

LOCK = threading.Lock()
STATE = {
    "tables": {},  # "p/d/t" -> {"resource": dict, "rows": {insertId: row}, "dups": int}
    "inserts": 0,
    "insert_rows": 0,
    "bad_requests": [],
    "schedule": [],
    "down": False,
    "poison": None,
    "fail_table": None,
    "fail_ratio": 0.0,
    "tokens": set(),
    "token_requests": 0,
    "creates": 0,
    "patches": 0,
}
PUBLIC_KEY = None
CLIENT_EMAIL = None
TOKEN_URI = None


def validate(value, schema, path="$"):
    """Checks `value` against a discovery-document schema; returns a list of problems."""
    if "$ref" in schema:
        if schema["$ref"] == "JsonObject":
            return [] if isinstance(value, dict) else [f"{path}: expected an object"]
        return validate(value, SCHEMAS[schema["$ref"]], path)
    t = schema.get("type")
    errs = []
    if t == "object":
        if not isinstance(value, dict):
            return [f"{path}: expected an object"]
        props = schema.get("properties")
        if props is None:
            return []
        for k, v in value.items():
            if k not in props:
                errs.append(f"{path}.{k}: unknown field")
            else:
                errs += validate(v, props[k], f"{path}.{k}")
    elif t == "array":
        if not isinstance(value, list):
            return [f"{path}: expected an array"]
        for i, v in enumerate(value):
            errs += validate(v, schema["items"], f"{path}[{i}]")
    elif t == "string":
        if not isinstance(value, str):
            errs.append(f"{path}: expected a string")
        elif schema.get("format") in ("int64", "uint64") and not re.fullmatch(r"-?\d+", value):
            errs.append(f"{path}: expected an integer string")
    elif t == "boolean":
        if not isinstance(value, bool):
            errs.append(f"{path}: expected a boolean")
    elif t == "integer":
        if not isinstance(value, int) or isinstance(value, bool):
            errs.append(f"{path}: expected an integer")
    elif t == "number":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            errs.append(f"{path}: expected a number")
    return errs


def b64url(data):
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def check_jwt(assertion):
    head, body, sig = assertion.split(".")
    PUBLIC_KEY.verify(
        b64url(sig), f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256()
    )
    h = json.loads(b64url(head))
    c = json.loads(b64url(body))
    now = time.time()
    assert h.get("alg") == "RS256", h
    assert c["iss"] == CLIENT_EMAIL, c
    assert c["aud"] == TOKEN_URI, c
    assert "bigquery" in c["scope"], c
    assert c["iat"] - 300 <= now <= c["exp"] + 300, c


def field_ok(field, value):
    """Whether `value` fits a BigQuery column as insertAll's JSON accepts it."""
    if value is None:
        return field.get("mode") != "REQUIRED"
    if field.get("mode") == "REPEATED":
        return isinstance(value, list) and all(
            field_ok({**field, "mode": "NULLABLE"}, v) for v in value
        )
    t = field["type"]
    if t in ("INTEGER", "INT64"):
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, str) and re.fullmatch(r"-?\d+", value) is not None
        )
    if t in ("FLOAT", "FLOAT64"):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t == "STRING":
        return isinstance(value, str)
    if t in ("BOOLEAN", "BOOL"):
        return isinstance(value, bool)
    if t == "TIMESTAMP":
        return isinstance(value, str) and re.fullmatch(
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", value
        ) is not None
    if t in ("BOOLEAN", "BOOL"):
        return isinstance(value, bool)
    return True


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def error(self, status, reason, message):
        self.reply(
            status,
            {
                "error": {
                    "code": status,
                    "message": message,
                    "errors": [{"reason": reason, "message": message, "domain": "global"}],
                    "status": reason.upper(),
                }
            },
        )

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(n)
        if self.headers.get("Content-Encoding") == "gzip":
            data = gzip.decompress(data)
        return data

    def authorized(self):
        auth = self.headers.get("Authorization", "")
        with LOCK:
            ok = auth.startswith("Bearer ") and auth[7:] in STATE["tokens"]
        if not ok:
            self.error(401, "unauthorized", "missing or unknown bearer token")
        return ok

    def do_POST(self):
        url = urlparse(self.path)
        if url.path == "/token":
            form = parse_qs(self.body().decode())
            try:
                assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
                check_jwt(form["assertion"][0])
            except Exception as e:  # noqa: BLE001 - any failure is a refusal
                return self.reply(400, {"error": "invalid_grant", "error_description": repr(e)})
            with LOCK:
                STATE["token_requests"] += 1
                tok = f"tok-{STATE['token_requests']}"
                STATE["tokens"].add(tok)
            return self.reply(200, {"access_token": tok, "expires_in": 3600, "token_type": "Bearer"})
        if url.path == "/control":
            ctl = json.loads(self.body() or b"{}")
            with LOCK:
                if "schedule" in ctl:
                    STATE["schedule"] = list(ctl["schedule"])
                if "down" in ctl:
                    STATE["down"] = bool(ctl["down"])
                if "poison" in ctl:
                    STATE["poison"] = ctl["poison"]
                if "fail_table" in ctl:
                    STATE["fail_table"] = ctl["fail_table"]
                if "fail_ratio" in ctl:
                    STATE["fail_ratio"] = float(ctl["fail_ratio"])
                if ctl.get("drop_tables"):
                    STATE["tables"] = {}
            return self.reply(200, {"ok": True})
        m = re.fullmatch(r"/bigquery/v2/projects/([^/]+)/datasets/([^/]+)/tables", url.path)
        if m:
            if not self.authorized():
                return
            req = json.loads(self.body())
            problems = validate(req, SCHEMAS["Table"])
            if problems:
                STATE["bad_requests"].append(problems)
                return self.error(400, "invalid", "; ".join(problems))
            tid = req["tableReference"]["tableId"]
            key = f"{m.group(1)}/{m.group(2)}/{tid}"
            with LOCK:
                if key in STATE["tables"]:
                    return self.error(409, "duplicate", "Already Exists: Table " + key)
                STATE["tables"][key] = {"resource": req, "rows": {}, "dups": 0}
                STATE["creates"] += 1
            return self.reply(200, req)
        m = re.fullmatch(
            r"/bigquery/v2/projects/([^/]+)/datasets/([^/]+)/tables/([^/]+)/insertAll", url.path
        )
        if m:
            return self.insert_all(f"{m.group(1)}/{m.group(2)}/{m.group(3)}")
        self.error(404, "notFound", "no such endpoint " + url.path)

    def insert_all(self, key):
        if not self.authorized():
            return
        raw = self.body()
        with LOCK:
            STATE["inserts"] += 1
            step = STATE["schedule"].pop(0) if STATE["schedule"] else None
            down = STATE["down"]
            failing = STATE["fail_table"]
            unlucky = random.random() < STATE["fail_ratio"]
        if down:
            return self.error(503, "backendError", "the service is down (fake outage)")
        if failing and failing["table"] == key:
            return self.error(failing["status"], "backendError", "this table fails (fake)")
        if unlucky:
            return self.error(503, "backendError", "a random failure (fake fail_ratio)")
        if step:
            mode = step.get("mode")
            if mode == "reset":
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if mode == "timeout":
                time.sleep(float(step.get("secs", 5)))
            elif "status" in step:
                return self.error(step["status"], step.get("reason", "backendError"), "scheduled failure")
        req = json.loads(raw)
        problems = validate(req, SCHEMAS["TableDataInsertAllRequest"])
        if problems:
            STATE["bad_requests"].append(problems)
            return self.error(400, "invalid", "; ".join(problems))
        with LOCK:
            table = STATE["tables"].get(key)
            if table is None:
                return self.error(404, "notFound", "Not found: Table " + key)
            fields = {f["name"]: f for f in table["resource"]["schema"]["fields"]}
            rows = req.get("rows", [])
            bad = {}
            for i, r in enumerate(rows):
                if "insertId" not in r:
                    bad[i] = "no insertId"
                    continue
                for k, v in r["json"].items():
                    if k not in fields:
                        bad[i] = f"no such field: {k}"
                    elif not field_ok(fields[k], v):
                        bad[i] = f"bad value for {k}: {v!r}"
                if STATE["poison"] and STATE["poison"] in json.dumps(r["json"]):
                    bad[i] = "poison row"
            if bad:
                errors = []
                for i in range(len(rows)):
                    if i in bad:
                        errors.append({"index": i, "errors": [{"reason": "invalid", "message": bad[i]}]})
                    else:
                        errors.append({"index": i, "errors": [{"reason": "stopped", "message": ""}]})
                return self.reply(200, {"kind": "bigquery#tableDataInsertAllResponse", "insertErrors": errors})
            for r in rows:
                STATE["insert_rows"] += 1
                if r["insertId"] in table["rows"]:
                    table["dups"] += 1
                else:
                    table["rows"][r["insertId"]] = r["json"]
        self.reply(200, {"kind": "bigquery#tableDataInsertAllResponse"})

    def do_GET(self):
        url = urlparse(self.path)
        if url.path == "/control/state":
            with LOCK:
                out = {
                    "inserts": STATE["inserts"],
                    "insert_rows": STATE["insert_rows"],
                    "bad_requests": STATE["bad_requests"],
                    "token_requests": STATE["token_requests"],
                    "creates": STATE["creates"],
                    "patches": STATE["patches"],
                    "tables": {
                        k: {
                            "rows": len(t["rows"]),
                            "dups": t["dups"],
                            "resource": t["resource"],
                        }
                        for k, t in STATE["tables"].items()
                    },
                }
            return self.reply(200, out)
        if url.path == "/control/rows":
            q = parse_qs(url.query)
            key = q["table"][0]
            with LOCK:
                rows = list(STATE["tables"].get(key, {"rows": {}})["rows"].values())
            if "fields" in q:
                keep = q["fields"][0].split(",")
                rows = [{k: r.get(k) for k in keep} for r in rows]
            return self.reply(200, rows)
        m = re.fullmatch(r"/bigquery/v2/projects/([^/]+)/datasets/([^/]+)/tables/([^/]+)", url.path)
        if m:
            if not self.authorized():
                return
            key = f"{m.group(1)}/{m.group(2)}/{m.group(3)}"
            with LOCK:
                t = STATE["tables"].get(key)
            if t is None:
                return self.error(404, "notFound", "Not found: Table " + key)
            return self.reply(200, t["resource"])
        self.error(404, "notFound", "no such endpoint " + url.path)

    def do_PATCH(self):
        url = urlparse(self.path)
        m = re.fullmatch(r"/bigquery/v2/projects/([^/]+)/datasets/([^/]+)/tables/([^/]+)", url.path)
        if not m:
            return self.error(404, "notFound", "no such endpoint " + url.path)
        if not self.authorized():
            return
        req = json.loads(self.body())
        problems = validate(req, SCHEMAS["Table"])
        if problems:
            STATE["bad_requests"].append(problems)
            return self.error(400, "invalid", "; ".join(problems))
        key = f"{m.group(1)}/{m.group(2)}/{m.group(3)}"
        with LOCK:
            t = STATE["tables"].get(key)
            if t is None:
                return self.error(404, "notFound", "Not found: Table " + key)
            old = {f["name"]: f for f in t["resource"]["schema"]["fields"]}
            for f in req.get("schema", {}).get("fields", []):
                if f["name"] in old and old[f["name"]]["type"] != f["type"]:
                    return self.error(400, "invalid", f"Provided Schema does not match Table: {f['name']}")
            t["resource"]["schema"] = req["schema"]
            STATE["patches"] += 1
        self.reply(200, t["resource"])


def main():
    global PUBLIC_KEY, CLIENT_EMAIL, TOKEN_URI
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--write-key", required=True, help="service-account key file to create")
    ap.add_argument("--seed-table", action="append", default=[],
                    help="p/d/t=name:TYPE,name:TYPE an existing table (e.g. the Go devourer's)")
    args = ap.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    port = server.server_address[1]
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    PUBLIC_KEY = key.public_key()
    CLIENT_EMAIL = "devourer-test@fake-project.iam.gserviceaccount.com"
    TOKEN_URI = f"http://127.0.0.1:{port}/token"
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    with open(args.write_key, "w") as f:
        json.dump(
            {
                "type": "service_account",
                "project_id": "fake-project",
                "private_key_id": "0123456789abcdef",
                "private_key": pem,
                "client_email": CLIENT_EMAIL,
                "client_id": "1",
                "auth_uri": "https://accounts.google.com/o/oauth2/auth",
                "token_uri": TOKEN_URI,
            },
            f,
        )
    for seed in args.seed_table:
        key_name, cols = seed.split("=")
        p, d, t = key_name.split("/")
        fields = [{"name": c.split(":")[0], "type": c.split(":")[1], "mode": "NULLABLE"} for c in cols.split(",")]
        STATE["tables"][key_name] = {
            "resource": {
                "tableReference": {"projectId": p, "datasetId": d, "tableId": t},
                "schema": {"fields": fields},
            },
            "rows": {},
            "dups": 0,
        }
    print(port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
