"""A CloudShark stand-in implementing the documented upload API exactly, for tests.

POST {base}/api/v1/{token}/upload, multipart/form-data with part `file` (and optional
`filename`, `additional_tags`, `comments`), answers {"filename": .., "id": ..} as
text/javascript; GET {base}/api/v1/{token}/info/{id} answers the capture's details. A wrong
token or a request without `file` gets {"status": N, "exceptions": [..]}. Each upload is kept
in DIR as ID.pcap (its bytes) and ID.json (filename and tags).

Usage: fake_cloudshark.py PORT TOKEN DIR
"""

import email.parser
import email.policy
import json
import os
import sys
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, TOKEN, DIR = int(sys.argv[1]), sys.argv[2], sys.argv[3]
MAX_BODY = 256 << 20


class Handler(BaseHTTPRequestHandler):
    def answer(self, status, obj, ctype="text/javascript"):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def fail(self, status, why):
        self.answer(status, {"status": status, "exceptions": [why]}, "application/json")

    def route(self):
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) < 4 or parts[:2] != ["api", "v1"]:
            return None, None
        if parts[2] != TOKEN:
            return "bad-token", None
        return parts[3], parts[4:]

    def do_POST(self):
        action, _ = self.route()
        if action == "bad-token":
            return self.fail(401, "Invalid API token")
        if action != "upload":
            return self.fail(404, "no such API call")
        length = int(self.headers.get("Content-Length", "0"))
        if length <= 0 or length > MAX_BODY:
            return self.fail(413, "bad length")
        body = self.rfile.read(length)
        ctype = self.headers.get("Content-Type", "")
        if not ctype.startswith("multipart/form-data"):
            return self.fail(400, "not multipart/form-data")
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body
        )
        fields, data, filename = {}, None, None
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if name == "file":
                data = payload
                filename = part.get_filename()
            elif name:
                fields[name] = payload.decode()
        if data is None:
            return self.fail(400, "No file was uploaded")
        filename = fields.get("filename") or filename or "upload.pcap"
        cid = uuid.uuid4().hex[:12]
        with open(os.path.join(DIR, cid + ".pcap"), "wb") as f:
            f.write(data)
        with open(os.path.join(DIR, cid + ".json"), "w") as f:
            json.dump(
                {"filename": filename, "tags": fields.get("additional_tags", ""), "size": len(data)},
                f,
            )
        self.answer(200, {"filename": filename, "id": cid})

    def do_GET(self):
        action, rest = self.route()
        if action == "bad-token":
            return self.fail(401, "Invalid API token")
        if action != "info" or len(rest) != 1 or not rest[0].isalnum():
            return self.fail(404, "no such API call")
        try:
            with open(os.path.join(DIR, rest[0] + ".json")) as f:
                info = json.load(f)
        except OSError:
            return self.fail(404, "no such capture")
        info["id"] = rest[0]
        self.answer(200, info)

    def log_message(self, *_):
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
