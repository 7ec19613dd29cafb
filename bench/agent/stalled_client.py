#!/usr/bin/env python3
"""HTTP/2 clients that stop reading (bench/agent/stalled.sh).

usage: stalled_client.py PORT AUTHORITY PATH CONNECTIONS STREAMS HOLD [RAMP]

Opens CONNECTIONS connections of STREAMS GET streams each, RAMP seconds
apart (default 0: all at once), grants every stream only HTTP/2's initial
64 KiB window and never more (the connection's window is large, so only the
streams stall), keeps them until HOLD seconds after the first opened, then
closes. Prints one JSON line: bytes received, responses by status, streams
the proxy reset.
"""
import asyncio
import json
import sys

import h2.config
import h2.connection
import h2.events

port, authority, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
connections, streams, hold = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
ramp = float(sys.argv[7]) if len(sys.argv) > 7 else 0.0
seen = {"received": 0, "status": {}, "reset": 0, "closed": 0}


async def stall(delay):
    await asyncio.sleep(delay)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.increment_flow_control_window(1 << 30)
    for _ in range(streams):
        stream = conn.get_next_available_stream_id()
        headers = [(":method", "GET"), (":scheme", "http"),
                   (":authority", authority), (":path", path)]
        conn.send_headers(stream, headers, end_stream=True)
    writer.write(conn.data_to_send())
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                seen["closed"] += 1
                return
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers)[b":status"].decode()
                    seen["status"][status] = seen["status"].get(status, 0) + 1
                elif isinstance(event, h2.events.DataReceived):
                    seen["received"] += len(event.data)
                elif isinstance(event, h2.events.StreamReset):
                    seen["reset"] += 1
            writer.write(conn.data_to_send())
    finally:
        writer.close()


async def main():
    tasks = [asyncio.create_task(stall(i * ramp)) for i in range(connections)]
    await asyncio.sleep(hold)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps(seen), flush=True)


asyncio.run(main())
