#!/usr/bin/env python3
"""An OTLP receiver for the tests on the official protobuf definitions (PyPI
opentelemetry-proto) and gRPC (grpcio, the official Logs and Metrics servicers) or HTTP/protobuf
(POST /v1/logs, /v1/metrics): every request it accepts becomes one JSON line in the output file,
with the resource's attributes and each log record (event name, times, attributes) or metric
(name, kind, temporality, monotonicity, data points).

usage: otlp_receiver.py grpc|http PORT OUT.jsonl
"""
import json
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import gzip
import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc

LOCK = threading.Lock()


def any_value(v):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    if kind is None:
        return None
    return getattr(v, kind)


def attrs(kvs):
    return {kv.key: any_value(kv.value) for kv in kvs}


def logs_line(req):
    out = []
    for rl in req.resource_logs:
        for sl in rl.scope_logs:
            for r in sl.log_records:
                out.append({
                    "event_name": r.event_name,
                    "time_unix_nano": r.time_unix_nano,
                    "observed_time_unix_nano": r.observed_time_unix_nano,
                    "severity": r.severity_text,
                    "attributes": attrs(r.attributes),
                })
        resource = attrs(rl.resource.attributes)
    return {"signal": "logs", "resource": resource if req.resource_logs else {}, "records": out}


def metrics_line(req):
    out = []
    resource = {}
    for rm in req.resource_metrics:
        resource = attrs(rm.resource.attributes)
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                data = getattr(m, kind)
                points = []
                for p in data.data_points:
                    point = {"attributes": attrs(p.attributes)}
                    if kind == "histogram":
                        point.update(count=p.count, sum=p.sum, bucket_counts=list(p.bucket_counts),
                                     explicit_bounds=list(p.explicit_bounds))
                    else:
                        point["value"] = getattr(p, p.WhichOneof("value"))
                    points.append(point)
                out.append({
                    "name": m.name,
                    "kind": kind,
                    "temporality": getattr(data, "aggregation_temporality", None),
                    "monotonic": getattr(data, "is_monotonic", None),
                    "points": points,
                })
    return {"signal": "metrics", "resource": resource, "metrics": out}


class Output:
    def __init__(self, path):
        self.f = open(path, "a")

    def write(self, line):
        with LOCK:
            self.f.write(json.dumps(line) + "\n")
            self.f.flush()


class Logs(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, out):
        self.out = out

    def Export(self, request, context):
        line = logs_line(request)
        line["headers"] = {k: v for k, v in context.invocation_metadata()}
        self.out.write(line)
        return logs_service_pb2.ExportLogsServiceResponse()


class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, out):
        self.out = out

    def Export(self, request, context):
        self.out.write(metrics_line(request))
        return metrics_service_pb2.ExportMetricsServiceResponse()


def serve_grpc(port, out):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(out), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(out), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def serve_http(port, out):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            if self.headers.get("content-type") != "application/x-protobuf":
                self.send_response(415)
                self.end_headers()
                return
            if self.path == "/v1/logs":
                req = logs_service_pb2.ExportLogsServiceRequest.FromString(body)
                line = logs_line(req)
                line["headers"] = {k.lower(): v for k, v in self.headers.items()}
                out.write(line)
                resp = logs_service_pb2.ExportLogsServiceResponse()
            elif self.path == "/v1/metrics":
                req = metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
                out.write(metrics_line(req))
                resp = metrics_service_pb2.ExportMetricsServiceResponse()
            else:
                self.send_response(404)
                self.end_headers()
                return
            data = resp.SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def main():
    mode, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    out = Output(path)
    (serve_grpc if mode == "grpc" else serve_http)(port, out)


if __name__ == "__main__":
    main()
