"""A fluentd Forward receiver written from the Forward Protocol Specification v1, for tests.

It takes the four carrier modes (Message, Forward, PackedForward, CompressedPackedForward with
gzip), EventTime (msgpack extension 0) and integer times, answers `chunk` options with
{"ack": chunk}, and with --shared-key runs the handshake (HELO, PING, PONG; a wrong key is
refused with PONG false and the connection closed). Every event is appended to OUT as one
JSON line {"tag":..,"time":[sec,nsec],"record":{..},"mode":..}, flushed before the ack.

With --tls-cert and --tls-key it speaks TLS (fluentd's `<transport tls>`).

Usage: fake_fluentd.py PORT OUT [--shared-key KEY] [--hostname NAME] [--tls-cert PEM --tls-key PEM]
"""

import argparse
import gzip
import hashlib
import json
import os
import socketserver
import ssl
import threading

import msgpack

ap = argparse.ArgumentParser()
ap.add_argument("port", type=int)
ap.add_argument("out")
ap.add_argument("--shared-key")
ap.add_argument("--hostname", default="fake-fluentd")
ap.add_argument("--tls-cert")
ap.add_argument("--tls-key")
args = ap.parse_args()
tls = None
if args.tls_cert:
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(args.tls_cert, args.tls_key)
lock = threading.Lock()


class EventTime:
    def __init__(self, data):
        if len(data) != 8:
            raise ValueError("EventTime is 8 bytes")
        self.sec = int.from_bytes(data[:4], "big")
        self.nsec = int.from_bytes(data[4:], "big")


def ext_hook(code, data):
    if code == 0:
        return EventTime(data)
    return msgpack.ExtType(code, data)


def time_of(t):
    if isinstance(t, EventTime):
        return [t.sec, t.nsec]
    if isinstance(t, int):
        return [t, 0]
    if isinstance(t, float):
        return [int(t), int((t - int(t)) * 1e9)]
    raise ValueError("not a time: %r" % (t,))


def unpacker():
    return msgpack.Unpacker(raw=False, ext_hook=ext_hook, max_buffer_size=64 << 20)


def events_of(msg):
    """(mode, tag, [(time, record)], option) of one message."""
    if not isinstance(msg, list) or len(msg) < 2 or not isinstance(msg[0], str):
        raise ValueError("not a Forward message")
    tag, second = msg[0], msg[1]
    if isinstance(second, (EventTime, int, float)):
        if len(msg) < 3 or not isinstance(msg[2], dict):
            raise ValueError("Message mode without a record")
        option = msg[3] if len(msg) > 3 else {}
        return "Message", tag, [(second, msg[2])], option
    option = msg[2] if len(msg) > 2 else {}
    option = option if isinstance(option, dict) else {}
    if isinstance(second, list):
        return "Forward", tag, [(e[0], e[1]) for e in second], option
    if isinstance(second, (bytes, str)):
        # The spec's entries are bin; some clients send str.
        mode = "PackedForward" if isinstance(second, bytes) else "PackedForward(str)"
        data = second.encode() if isinstance(second, str) else second
        if option.get("compressed") == "gzip":
            data = gzip.decompress(data)
            mode = "Compressed" + mode
        u = unpacker()
        u.feed(data)
        return mode, tag, [(e[0], e[1]) for e in u], option
    raise ValueError("unknown carrier mode")


def digest(salt, hostname, nonce, key):
    h = hashlib.sha512()
    for part in (salt, hostname, nonce, key):
        h.update(part if isinstance(part, bytes) else part.encode())
    return h.hexdigest()


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        if tls:
            try:
                self.request = tls.wrap_socket(self.request, server_side=True)
            except (ssl.SSLError, OSError):
                return
        sock = self.request
        u = unpacker()
        if args.shared_key:
            nonce = os.urandom(16)
            sock.sendall(msgpack.packb(["HELO", {"nonce": nonce, "auth": b"", "keepalive": True}], use_bin_type=True))
            ping = self.next(u)
            if not (isinstance(ping, list) and len(ping) == 6 and ping[0] == "PING"):
                return
            _, client, salt, their, _, _ = ping
            if their != digest(salt, client, nonce, args.shared_key):
                sock.sendall(msgpack.packb(["PONG", False, "shared key mismatch", args.hostname, ""]))
                return
            sock.sendall(msgpack.packb(["PONG", True, "", args.hostname, digest(salt, args.hostname, nonce, args.shared_key)]))
        while True:
            msg = self.next(u)
            if msg is None:
                return
            mode, tag, events, option = events_of(msg)
            with lock, open(args.out, "a") as f:
                size_ok = option.get("size", len(events)) == len(events)
                for t, record in events:
                    line = {
                        "tag": tag,
                        "time": time_of(t),
                        "event_time": isinstance(t, EventTime),
                        "record": record,
                        "mode": mode,
                        "size_ok": size_ok,
                        "acked": "chunk" in option,
                    }
                    f.write(json.dumps(line) + "\n")
                f.flush()
                os.fsync(f.fileno())
            if "chunk" in option:
                sock.sendall(msgpack.packb({"ack": option["chunk"]}))

    def next(self, u):
        while True:
            for msg in u:
                return msg
            data = self.request.recv(1 << 16)
            if not data:
                return None
            u.feed(data)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


Server(("127.0.0.1", args.port), Handler).serve_forever()
