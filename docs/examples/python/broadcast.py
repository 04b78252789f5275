"""Publish one message to every session on every pod.

    python broadcast.py "maintenance at 22:00"
"""
import asyncio
import json
import os
import sys

import nats

SERVERS = os.environ.get("NATS_URL", "nats://127.0.0.1:4222").split(",")
PREFIX = os.environ.get("HERALD_SUBJECT_PREFIX", "herald")


async def main(text: str) -> None:
    nc = await nats.connect(servers=SERVERS)
    await nc.publish(
        f"{PREFIX}.broadcast",
        json.dumps({"text": text}).encode(),
        headers={"Herald-Event": "notice"},
    )
    await nc.flush()
    print(f"broadcast on {PREFIX}.broadcast")
    await nc.close()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    asyncio.run(main(sys.argv[1]))
