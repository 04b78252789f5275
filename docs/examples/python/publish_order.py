"""Publish an order to one user's sessions, on whichever pods hold them.

    python publish_order.py u1 A-1001            # every session of u1
    python publish_order.py u1 A-1002 printer-1  # only u1's sessions opened with device=printer-1
"""
import asyncio
import json
import os
import sys

import nats

SERVERS = os.environ.get("NATS_URL", "nats://127.0.0.1:4222").split(",")
PREFIX = os.environ.get("HERALD_SUBJECT_PREFIX", "herald")


async def main(user: str, order_id: str, device: str | None) -> None:
    nc = await nats.connect(servers=SERVERS)
    headers = {
        "Herald-Event": "order",  # becomes "event" in the frame
        "Nats-Msg-Id": f"order-{order_id}",  # becomes "id" (and "cursor") in the frame
    }
    if device:
        headers["Herald-Device"] = device  # deliver only to sessions opened with this device
    payload = json.dumps({"id": order_id, "total": 12.5}).encode()
    await nc.publish(f"{PREFIX}.user.{user}", payload, headers=headers)
    await nc.flush()  # core NATS: fire and forget; flush makes sure it left this process
    print(f"published {headers['Nats-Msg-Id']} to {PREFIX}.user.{user}")
    await nc.close()


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None))
