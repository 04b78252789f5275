"""Follow sessions and pods: presence events of every user, and pod up/draining/down.

    python listen_events.py
"""
import asyncio
import os

import nats

SERVERS = os.environ.get("NATS_URL", "nats://127.0.0.1:4222").split(",")
PREFIX = os.environ.get("HERALD_SUBJECT_PREFIX", "herald")


async def main() -> None:
    async def on_error(e):
        print(f"nats: {e!r}", flush=True)

    # A long-lived listener: reconnect forever (nats-py gives up after 60 attempts by default).
    nc = await nats.connect(servers=SERVERS, max_reconnect_attempts=-1, error_cb=on_error)

    async def on_event(msg):
        print(msg.subject, msg.data.decode(), flush=True)

    await nc.subscribe(f"{PREFIX}.events.presence.*", cb=on_event)
    await nc.subscribe(f"{PREFIX}.events.pod", cb=on_event)
    print(f"listening on {PREFIX}.events.presence.* and {PREFIX}.events.pod", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
