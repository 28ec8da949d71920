"""What RabbitMQ holds per image: IMAGE_STORE=inline vs gs:// (claim check).

    python bench/store_message_size.py [MEGABYTES]      (default 10)

Posts one image of about MEGABYTES through a real rest (private Redis, private RabbitMQ
vhost, no worker, so the message stays queued), reads the message back (body and header
sizes) and the queue's memory from rabbitmqctl (quorum queues report no message_bytes);
then the same with a gcp-storage-emulator bucket. Prints a table.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pika

from facerec.broker import IMAGE_QUEUE, connection_parameters
from facerec.settings import Settings
from tests.services import Env, RedisServer, Vhost, free_port, http, reset_vhost, wait_until


def noise_jpeg(megabytes: float) -> bytes:
    """A JPEG of about `megabytes` (noise does not compress)."""
    rng = np.random.default_rng(0)
    side = 1000
    while True:
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=95)
        if buf.tell() >= megabytes * 1e6:
            return buf.getvalue()
        side = int(side * (megabytes * 1e6 / buf.tell()) ** 0.5) + 50


def queue_stats(vhost: str) -> dict[str, int]:
    out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "messages",
                          "memory", "--formatter", "json"],
                         capture_output=True, text=True, check=True).stdout
    (row,) = [r for r in json.loads(out) if r["name"] == IMAGE_QUEUE]
    return {k: int(row[k]) for k in ("messages", "memory")}


def peek(settings: Settings) -> tuple[int, int]:
    """(body bytes, header bytes as JSON) of the queued message, left in the queue."""
    conn = pika.BlockingConnection(connection_parameters(settings))
    try:
        ch = conn.channel()
        method, props, body = ch.basic_get(IMAGE_QUEUE)
        ch.basic_nack(method.delivery_tag, requeue=True)
        return len(body), len(json.dumps(props.headers))
    finally:
        conn.close()


def main() -> None:
    megabytes = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    image = noise_jpeg(megabytes)
    redis_server = RedisServer().start()
    vhost = Vhost().create()
    settings = Settings.from_env({}, redis_port=redis_server.port, rabbitmq_vhost=vhost.name,
                                 max_upload_bytes=64 * 1024 * 1024)
    env = Env(settings, redis_server)
    port = free_port()
    emulator = subprocess.Popen([str(Path(sys.executable).with_name("gcp-storage-emulator")),
                                 "start", "--host", "127.0.0.1", "--port", str(port),
                                 "--in-memory", "--default-bucket", "facerec-bench", "-q"])
    rows = []
    try:
        for label, extra in (("inline", {}),
                             ("gs://", {"IMAGE_STORE": "gs://facerec-bench/images",
                                        "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}"})):
            redis_server.flush()
            reset_vhost(settings)
            rest = env.start_rest(MAX_UPLOAD_BYTES=str(64 * 1024 * 1024), **extra)
            http("GET", f"{rest}/readyz")
            empty = queue_stats(vhost.name)
            reply = http("POST", f"{rest}/scan/image/big.jpg", image, timeout=120)
            assert reply.status == 200, reply.body
            wait_until(lambda: queue_stats(vhost.name)["messages"] == 1, 30, "the message")
            time.sleep(1)  # let the queue's memory figure settle
            stats = queue_stats(vhost.name)
            body, header = peek(settings)
            rows.append((label, body, header, stats["memory"] - empty["memory"]))
            env.stop_all()
    finally:
        env.stop_all()
        emulator.terminate()
        vhost.delete()
        redis_server.close()
    print(f"Image: {len(image) / 1e6:.1f} MB JPEG; one message queued, no worker running.\n")
    print("| IMAGE_STORE | message body | header (as JSON) | queue process memory growth |")
    print("|---|---|---|---|")
    for label, body, header, memory in rows:
        print(f"| {label} | {body:,} B | {header:,} B | {memory:,} B |")


if __name__ == "__main__":
    main()
