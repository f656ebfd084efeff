#!/usr/bin/env python3
"""Acts as "a Django process" on a channel layer, for the Rust port's interop tests.

The layer is the real channels_redis class that the seed project (tests/django_seed) configures,
built by channels' get_channel_layer() from the seed settings, so the same environment variables
apply: SEED_LAYER (core or pubsub; memory cannot reach another process and is refused),
SEED_REDIS_URLS, SEED_PREFIX and SEED_ENCRYPTION_KEYS. Run it with the project venv:

    .venv/bin/python tests/python/layer_tool.py group-send GROUP --message JSON
    .venv/bin/python tests/python/layer_tool.py send CHANNEL --message JSON
    .venv/bin/python tests/python/layer_tool.py receive --group GROUP [--timeout S]
    .venv/bin/python tests/python/layer_tool.py receive-channel [--timeout S]

Each command prints one JSON line on stdout; the receive commands first print {"channel": NAME}
and flush it once the channel can receive, so the caller may start sending, then print the
message received. Messages use a tagged JSON encoding so that bytes survive: {"$bytes": "<hex>"}
stands for a bytes value, everything else is plain JSON (ints stay ints, floats stay floats).

Exit status: 0 on success, 2 when a receive timed out (after printing {"timeout": true}), 1 on any
other failure, with the reason on stderr. The tool does not flush the layer: for core that would
delete every key under the prefix, including other processes' groups and messages.
"""

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path

EXIT_ERROR = 1
EXIT_TIMEOUT = 2

SEED_DIR = Path(__file__).resolve().parent.parent / "django_seed"

# How long a pub/sub receiver waits for Redis to confirm its subscriptions before going on anyway.
SUBSCRIBE_WAIT_SECONDS = 5.0


class ToolError(Exception):
    """A failure reported as a one-line message on stderr, without a traceback."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors exit 1, keeping 2 for timeouts."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def decode_tagged(value):
    """Turns tagged JSON into the Python message: {"$bytes": hex} becomes bytes."""
    if isinstance(value, dict):
        if len(value) == 1 and "$bytes" in value:
            try:
                return bytes.fromhex(value["$bytes"])
            except (TypeError, ValueError) as error:
                raise ToolError(f"bad $bytes value {value['$bytes']!r}: {error}") from None
        return {key: decode_tagged(item) for key, item in value.items()}
    if isinstance(value, list):
        return [decode_tagged(item) for item in value]
    return value


def encode_tagged(value):
    """Turns a received Python message into tagged JSON: bytes become {"$bytes": hex}."""
    if isinstance(value, (bytes, bytearray)):
        return {"$bytes": bytes(value).hex()}
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise ToolError(f"message has a non-str map key {key!r}")
        return {key: encode_tagged(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_tagged(item) for item in value]
    return value


def emit(obj):
    """Prints one JSON line and flushes it, so a waiting caller sees it at once."""
    # json.dumps writes 1.0 as "1.0", so floats stay floats for the reader.
    print(json.dumps(obj, ensure_ascii=False, allow_nan=False), flush=True)


def load_layer():
    """Builds the default channel layer from the seed settings, refusing the in-memory one."""
    sys.path.insert(0, str(SEED_DIR))
    os.environ["DJANGO_SETTINGS_MODULE"] = "djangoProject.settings"
    from channels.layers import get_channel_layer
    from django.conf import settings

    config = settings.CHANNEL_LAYERS["default"]
    if not config["BACKEND"].startswith("channels_redis."):
        raise ToolError(
            f"SEED_LAYER selects {config['BACKEND']}, which cannot reach another process: "
            "set SEED_LAYER=core or SEED_LAYER=pubsub"
        )
    return get_channel_layer(), config


def is_pubsub(config):
    return config["BACKEND"].endswith("RedisPubSubChannelLayer")


async def pubsub_counts(config, names):
    """Returns PUBSUB NUMSUB for each name, asked on the shard the layer uses for that name."""
    from channels_redis.utils import _consistent_hash
    from redis import asyncio as aioredis

    hosts = config["CONFIG"]["hosts"]
    counts = {}
    for name in names:
        client = aioredis.Redis.from_url(hosts[_consistent_hash(name, len(hosts))])
        try:
            counts[name] = dict(await client.pubsub_numsub(name))[name.encode()]
        finally:
            await client.aclose()
    return counts


async def wait_subscribed(config, wanted):
    """Waits until each Redis channel in `wanted` (name -> minimum subscriber count) is reached.

    The pub/sub layer sends SUBSCRIBE without waiting for Redis to process it, so a message
    published right after group_add could otherwise miss this process. Gives up quietly after
    SUBSCRIBE_WAIT_SECONDS: another process unsubscribing meanwhile can hide our subscription.
    """
    deadline = time.monotonic() + SUBSCRIBE_WAIT_SECONDS
    while time.monotonic() < deadline:
        counts = await pubsub_counts(config, list(wanted))
        if all(counts[name] >= minimum for name, minimum in wanted.items()):
            return
        await asyncio.sleep(0.01)
    print(f"layer_tool: warning: subscriptions {sorted(wanted)} not confirmed", file=sys.stderr)


async def close_layer(layer, config):
    """Closes the layer's connections without deleting anything in Redis."""
    if is_pubsub(config):
        await layer.flush()  # pub/sub flush only drops local state and connections
    else:
        await layer.close_pools()


async def receive_one(layer, channel, timeout):
    """Receives one message on `channel` and prints it; returns the exit status."""
    try:
        message = await asyncio.wait_for(layer.receive(channel), timeout)
    except asyncio.TimeoutError:
        emit({"timeout": True})
        return EXIT_TIMEOUT
    emit(encode_tagged(message))
    return 0


async def cmd_send(layer, config, args):
    await layer.send(args.channel, decode_tagged(args.message))
    emit({"ok": True})
    return 0


async def cmd_group_send(layer, config, args):
    await layer.group_send(args.group, decode_tagged(args.message))
    emit({"ok": True})
    return 0


async def cmd_receive(layer, config, args):
    channel = await layer.new_channel()
    if is_pubsub(config):
        group_channel = f"{config['CONFIG']['prefix']}__group__{args.group}"
        before = (await pubsub_counts(config, [group_channel]))[group_channel]
    await layer.group_add(args.group, channel)
    try:
        if is_pubsub(config):
            await wait_subscribed(config, {channel: 1, group_channel: before + 1})
        emit({"channel": channel})
        return await receive_one(layer, channel, args.timeout)
    finally:
        # Core keeps groups in Redis: leave, so later group_sends skip this dead channel.
        await layer.group_discard(args.group, channel)


async def cmd_receive_channel(layer, config, args):
    channel = await layer.new_channel()
    if is_pubsub(config):
        await wait_subscribed(config, {channel: 1})
    emit({"channel": channel})
    return await receive_one(layer, channel, args.timeout)


def json_arg(text):
    try:
        return json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON: {error}") from None


def positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def parse_args(argv):
    parser = Parser(prog="layer_tool", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    group_send = commands.add_parser("group-send", help="group_send(GROUP, message)")
    group_send.add_argument("group")
    group_send.add_argument("--message", type=json_arg, required=True)
    group_send.set_defaults(run=cmd_group_send)

    send = commands.add_parser("send", help="send(CHANNEL, message)")
    send.add_argument("channel")
    send.add_argument("--message", type=json_arg, required=True)
    send.set_defaults(run=cmd_send)

    receive = commands.add_parser("receive", help="join GROUP on a new channel, print one message")
    receive.add_argument("--group", required=True)
    receive.add_argument("--timeout", type=positive_float, default=10.0)
    receive.set_defaults(run=cmd_receive)

    receive_channel = commands.add_parser("receive-channel", help="print one message on a new channel")
    receive_channel.add_argument("--timeout", type=positive_float, default=10.0)
    receive_channel.set_defaults(run=cmd_receive_channel)

    return parser.parse_args(argv)


async def run(args):
    layer, config = load_layer()
    try:
        return await args.run(layer, config, args)
    finally:
        await close_layer(layer, config)


def main(argv=None):
    sys.stdout.reconfigure(encoding="utf-8")
    logging.basicConfig(level=logging.WARNING, format="layer_tool: %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        return asyncio.run(run(args))
    except ToolError as error:
        print(f"layer_tool: error: {error}", file=sys.stderr)
    except Exception as error:  # report any layer or Redis failure in one line, then exit 1
        reason = type(error).__name__ + (f": {error}" if str(error) else "")
        if reason == "InvalidToken":
            reason += " (the message was encrypted with other SEED_ENCRYPTION_KEYS, or none)"
        print(f"layer_tool: error: {reason}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
