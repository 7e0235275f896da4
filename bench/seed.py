#!/usr/bin/env python3
"""Stores COUNT tasks as a submit here leaves them once Kling's create answer bound them
(a head naming its submission and `task_id`, and a listing entry), with the same ids as
`requests.py new PREFIX COUNT`, so that the `news` scenario's deliveries are news of
tasks submitted here: the product's everyday callback.

usage: seed.py PREFIX COUNT sqlite DIR      (Spin's SQLite file DIR/default.db)
       seed.py PREFIX COUNT redis PORT      (database 0, as on-spin.sh maps the default label)
"""
import json
import sqlite3
import subprocess
import sys

SUBMITTED_AT = 1722769500000


def entries(prefix: str, count: int):
    for i in range(count):
        ext_id, task_id = f"{prefix}-{i}", f"{prefix}{i:010d}"
        head = {
            "task_id": task_id,
            "external_task_id": ext_id,
            "seen": {},
            "deliveries": 0,
            "submission": {
                "kind": "text2video",
                "nonce": f"seed{i}",
                "status": "submitted",
                "submitted_at": SUBMITTED_AT,
            },
        }
        yield (
            ("default", f"task:{ext_id}", json.dumps(head, separators=(",", ":")).encode()),
            ("default", f"taskid:{task_id}", ext_id.encode()),
            ("default", f"listed/{SUBMITTED_AT:013d}/{ext_id}", b"1"),
        )


def seed_sqlite(prefix: str, count: int, directory: str) -> None:
    connections = {}
    for label in ("default",):
        db = sqlite3.connect(f"{directory}/{label}.db", timeout=30)
        db.execute(
            "CREATE TABLE IF NOT EXISTS spin_key_value (store TEXT NOT NULL, key TEXT NOT NULL,"
            " value BLOB NOT NULL, PRIMARY KEY (store, key))"
        )
        connections[label] = db
    for rows in entries(prefix, count):
        for label, key, value in rows:
            connections[label].execute(
                "INSERT OR REPLACE INTO spin_key_value (store, key, value) VALUES (?, ?, ?)",
                (label, key, value),
            )
    for db in connections.values():
        db.commit()
        db.close()


def resp(*parts: bytes) -> bytes:
    out = b"*%d\r\n" % len(parts)
    for part in parts:
        out += b"$%d\r\n%s\r\n" % (len(part), part)
    return out


def seed_redis(prefix: str, count: int, port: str) -> None:
    databases = {"default": b"0"}
    commands = bytearray()
    for rows in entries(prefix, count):
        for label, key, value in rows:
            commands += resp(b"SELECT", databases[label])
            commands += resp(b"SET", key.encode(), value)
    subprocess.run(
        ["redis-cli", "-p", port, "--pipe"], input=bytes(commands), check=True,
        stdout=subprocess.DEVNULL,
    )


def main() -> None:
    prefix, count, kind, where = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    if kind == "sqlite":
        seed_sqlite(prefix, count, where)
    else:
        seed_redis(prefix, count, where)


if __name__ == "__main__":
    main()
