"""Receive what browsers send: the data of every client {"type":"publish"} frame.

    python listen_up.py

Run several copies with QUEUE=workers to share the work (NATS queue group).
"""
import asyncio
import os

import nats

SERVERS = os.environ.get("NATS_URL", "nats://127.0.0.1:4222").split(",")
PREFIX = os.environ.get("HERALD_SUBJECT_PREFIX", "herald")
QUEUE = os.environ.get("QUEUE", "")


async def main() -> None:
    async def on_error(e):
        print(f"nats: {e!r}", flush=True)

    # A long-lived listener: reconnect forever (nats-py gives up after 60 attempts by default).
    nc = await nats.connect(servers=SERVERS, max_reconnect_attempts=-1, error_cb=on_error)

    async def on_up(msg):
        user = msg.subject.rsplit(".", 1)[1]
        h = msg.headers or {}
        print(
            f"{msg.subject} user={user} event={h.get('Herald-Event')} "
            f"session={h.get('Herald-Session')} pod={h.get('Herald-Pod')} "
            f"device={h.get('Herald-Device')} data={msg.data.decode()}",
            flush=True,
        )

    await nc.subscribe(f"{PREFIX}.up.*", queue=QUEUE, cb=on_up)
    print(f"listening on {PREFIX}.up.*", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
