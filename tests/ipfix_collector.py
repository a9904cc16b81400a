#!/usr/bin/env python3
"""An IPFIX (RFC 7011) collector over TCP for the tests, written from the RFC: reads each
connection's messages (framed by the header's length), learns templates, decodes data records,
and writes one JSON line per message to the output file: the connection's number, the header's
sequence number and observation domain, the set ids, and each data record's fields by
"id" or "pen:id" (integers for unsigned fields up to 8 bytes, text for addresses and strings).

usage: ipfix_collector.py PORT OUT.jsonl
"""
import ipaddress
import json
import socket
import struct
import sys
import threading

ADDRESSES = {8, 12, 225, 226, 27, 28, 281, 282}


def read_exact(conn, n):
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def value(eid, pen, raw):
    if pen == 0 and eid in ADDRESSES:
        return str(ipaddress.ip_address(raw))
    if pen not in (0, 29305):
        return raw.decode("utf-8")
    return int.from_bytes(raw, "big")


def decode_sets(body, templates):
    sets, records = [], []
    at = 0
    while at < len(body):
        set_id, length = struct.unpack_from("!HH", body, at)
        if length < 4:
            raise ValueError(f"set length {length}")
        content = body[at + 4:at + length]
        at += length
        sets.append(set_id)
        if set_id == 2:
            p = 0
            while p + 4 <= len(content):
                tid, count = struct.unpack_from("!HH", content, p)
                p += 4
                fields = []
                for _ in range(count):
                    eid, flen = struct.unpack_from("!HH", content, p)
                    p += 4
                    pen = 0
                    if eid & 0x8000:
                        (pen,) = struct.unpack_from("!I", content, p)
                        p += 4
                    fields.append((eid & 0x7FFF, pen, flen))
                templates[tid] = fields
        elif set_id >= 256:
            fields = templates[set_id]
            p = 0
            while p < len(content):
                rec = {"template": set_id}
                for eid, pen, flen in fields:
                    if flen == 65535:
                        flen = content[p]
                        p += 1
                        if flen == 255:
                            (flen,) = struct.unpack_from("!H", content, p)
                            p += 2
                    raw = content[p:p + flen]
                    if len(raw) != flen:
                        raise ValueError("record cut short")
                    p += flen
                    rec[f"{pen}:{eid}" if pen else str(eid)] = value(eid, pen, raw)
                records.append(rec)
    return sets, records


def serve(conn, number, out, lock):
    templates = {}
    with conn:
        while True:
            header = read_exact(conn, 16)
            if header is None:
                return
            version, length, export, seq, domain = struct.unpack("!HHIII", header)
            if version != 10 or length < 16:
                raise ValueError(f"bad header {version} {length}")
            body = read_exact(conn, length - 16)
            if body is None:
                return
            sets, records = decode_sets(body, templates)
            line = {"connection": number, "sequence": seq, "domain": domain,
                    "export_time": export, "sets": sets, "records": records}
            with lock:
                out.write(json.dumps(line) + "\n")
                out.flush()


def main():
    port, path = int(sys.argv[1]), sys.argv[2]
    lock = threading.Lock()
    out = open(path, "a")
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(4)
    # Numbered after the connections earlier runs wrote to the same file.
    number = sum(1 for _ in open(path)) and max(
        json.loads(l)["connection"] for l in open(path)) or 0
    while True:
        conn, _ = srv.accept()
        number += 1
        threading.Thread(target=serve, args=(conn, number, out, lock), daemon=True).start()


if __name__ == "__main__":
    main()
