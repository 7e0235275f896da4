#!/usr/bin/env python3
"""Writes the requests of one benchmark round for wrk (bench/lines.lua), one per line:
`path<TAB>body`. Each line of a `new` file is a different task, with its own signed
callback URL (sig = base64url(HMAC-SHA256(callback_secret, external_task_id)), as
src/signatures/callback_url.rs signs), so every request is a first delivery; a `dup` file
is one delivery, repeated.

usage: requests.py {new|dup} PREFIX COUNT SECRET > FILE
"""
import base64
import hashlib
import hmac
import json
import sys


def line(ext_id: str, task_id: str, secret: str) -> str:
    sig = hmac.new(secret.encode(), ext_id.encode(), hashlib.sha256).digest()
    sig = base64.urlsafe_b64encode(sig).rstrip(b"=").decode()
    body = {
        "task_id": task_id,
        "task_status": "succeed",
        "task_status_msg": "",
        "created_at": 1722769557708,
        "updated_at": 1722769600123,
        "final_unit_deduction": "1",
        "task_info": {"external_task_id": ext_id},
        "task_result": {
            "videos": [
                {"id": task_id + "1", "url": f"https://cdn.example/{task_id}.mp4", "duration": "5.1"}
            ]
        },
    }
    return f"/callbacks/kling/{ext_id}?sig={sig}\t{json.dumps(body, separators=(',', ':'))}"


def main() -> None:
    mode, prefix, count, secret = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    out = sys.stdout
    if mode == "dup":
        out.write(line(f"{prefix}-dup", f"{prefix}9000000000", secret) + "\n")
        return
    for i in range(count):
        out.write(line(f"{prefix}-{i}", f"{prefix}{i:010d}", secret) + "\n")


if __name__ == "__main__":
    main()
