"""Ask the cluster whether users are online (NATS request/reply).

    python presence.py u1 u2
"""
import asyncio
import os
import sys

import nats
from nats.errors import NoRespondersError, TimeoutError

SERVERS = os.environ.get("NATS_URL", "nats://127.0.0.1:4222").split(",")
PREFIX = os.environ.get("HERALD_SUBJECT_PREFIX", "herald")


async def main(users: list[str]) -> None:
    nc = await nats.connect(servers=SERVERS)
    for user in users:
        try:
            reply = await nc.request(f"{PREFIX}.presence.{user}", b"", timeout=2)
        except NoRespondersError:
            print(f"{user}: no herald pod is connected to NATS")
            continue
        except TimeoutError:
            print(f"{user}: no answer within 2 s")
            continue
        print(reply.data.decode())
    await nc.close()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    asyncio.run(main(sys.argv[1:]))
