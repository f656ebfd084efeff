#!/usr/bin/env python3
"""Checks that a running seed chat server behaves as the tutorial says, using only the stdlib.

It works against the Django seed project served by daphne (tests/django_seed) and against any
server that claims to reproduce it, such as the Rust port:

    python3 tests/python/seed_smoke.py --base http://127.0.0.1:PORT [--other-base http://...]

Checks, in order: the two pages answer 200 with the tutorial's markup; /room/123/ echoes
"服务端主动推送消息:X" and closes from the server side on "exit"; two clients on /group/1/ both
receive "组内主动推送消息:X" when one of them sends X, while a client on /group/2/ receives
nothing. With --other-base the second group member connects to that server instead, so the group
message must cross the channel layer between two processes.

Prints one "ok: ..." line per check and exits 0, or prints "FAIL: ..." and exits 1. It does not
start servers; the caller does.
"""

import argparse
import base64
import hashlib
import os
import socket
import struct
import sys
import time
import urllib.request
from urllib.parse import urlsplit

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# The seed consumer accepts before it joins the group, so a member is reachable only a moment
# after its handshake completes; the checks wait this long before sending to a group.
GROUP_SETTLE_SECONDS = 0.5


class CheckFailed(Exception):
    """A check whose expectation did not hold."""


class WsClient:
    """A minimal RFC 6455 client: text frames, server close, ping replies; no extensions."""

    def __init__(self, base, path, timeout=5.0):
        parts = urlsplit(base)
        self.sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: {base}\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise CheckFailed(f"{path}: connection closed during the handshake")
            head += chunk
        head, self.buffer = head.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        if " 101 " not in lines[0] + " ":
            raise CheckFailed(f"{path}: handshake answered {lines[0]!r}")
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        if not any(line.lower() == f"sec-websocket-accept: {accept}".lower() for line in lines):
            raise CheckFailed(f"{path}: bad Sec-WebSocket-Accept")

    def _read(self, n):
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise CheckFailed("connection closed without a close frame")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def send_frame(self, opcode, payload):
        header = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 65536:
            header += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def send_text(self, text):
        self.send_frame(0x1, text.encode("utf-8"))

    def recv(self, timeout):
        """Returns ("text", str) or ("close", code), or None when nothing came within timeout."""
        self.sock.settimeout(timeout)
        try:
            while True:
                first, second = self._read(2)
                n = second & 0x7F
                if n == 126:
                    n = struct.unpack("!H", self._read(2))[0]
                elif n == 127:
                    n = struct.unpack("!Q", self._read(8))[0]
                payload = self._read(n)
                opcode = first & 0x0F
                if opcode == 0x1:
                    return "text", payload.decode("utf-8")
                if opcode == 0x8:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                    return "close", code
                if opcode == 0x9:
                    self.send_frame(0xA, payload)
        except socket.timeout:
            return None

    def close(self):
        try:
            self.send_frame(0x8, struct.pack("!H", 1000))
        except OSError:
            pass
        self.sock.close()


def expect(condition, message):
    if not condition:
        raise CheckFailed(message)


def check_pages(base):
    with urllib.request.urlopen(f"{base}/chatone", timeout=5) as response:
        body = response.read().decode("utf-8")
        expect(response.status == 200, f"/chatone answered {response.status}")
        expect('id="message"' in body and 'id="txt"' in body, "/chatone lacks #message or #txt")
    print("ok: GET /chatone answers 200 with the chat page")
    with urllib.request.urlopen(f"{base}/chatgroup?groupID=1", timeout=5) as response:
        body = response.read().decode("utf-8")
        expect(response.status == 200, f"/chatgroup answered {response.status}")
        expect("群组内聊天[ 群ID: 1 ]" in body, "/chatgroup lacks 群组内聊天[ 群ID: 1 ]")
    print("ok: GET /chatgroup?groupID=1 answers 200 and shows 群组内聊天[ 群ID: 1 ]")


def check_single_chat(base):
    client = WsClient(base, "/room/123/")
    try:
        client.send_text("hello 你好")
        got = client.recv(5)
        expect(got == ("text", "服务端主动推送消息:hello 你好"), f"/room/123/ echoed {got!r}")
        print("ok: /room/123/ echoes 服务端主动推送消息:hello 你好")
        client.send_text("exit")
        got = client.recv(5)
        expect(got is not None and got[0] == "close", f"/room/123/ answered exit with {got!r}")
        print(f"ok: /room/123/ closes from the server side on exit (code {got[1]})")
    finally:
        client.close()


def check_group_chat(base, other_base):
    a = WsClient(base, "/group/1/")
    b = WsClient(other_base, "/group/1/")
    c = WsClient(base, "/group/2/")
    try:
        time.sleep(GROUP_SETTLE_SECONDS)
        a.send_text("大家好")
        for name, client in (("sender", a), ("other member", b)):
            got = client.recv(5)
            expect(got == ("text", "组内主动推送消息:大家好"), f"/group/1/ {name} got {got!r}")
        print("ok: both /group/1/ members receive 组内主动推送消息:大家好")
        got = c.recv(0.5)
        expect(got is None, f"/group/2/ member got {got!r}")
        print("ok: the /group/2/ member receives nothing")
        b.send_text("second")
        for name, client in (("first member", a), ("sender", b)):
            got = client.recv(5)
            expect(got == ("text", "组内主动推送消息:second"), f"/group/1/ {name} got {got!r}")
        print("ok: a message from the other member reaches both as well")
    finally:
        for client in (a, b, c):
            client.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the server, e.g. http://127.0.0.1:8080")
    parser.add_argument("--other-base", help="a second server sharing the channel layer")
    args = parser.parse_args()
    base = args.base.rstrip("/")
    other_base = (args.other_base or base).rstrip("/")
    try:
        check_pages(base)
        check_single_chat(base)
        check_group_chat(base, other_base)
    except (CheckFailed, OSError) as error:
        print(f"FAIL: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
