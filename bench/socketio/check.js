"use strict";
// Checks the Socket.IO peer at the wire level, with raw WebSocket frames (the `ws` package that
// socket.io depends on), exactly as the Rust load generator must speak them (README.md).
//
//   node check.js                      # starts redis-server and two servers itself, then checks
//   node check.js http://127.0.0.1:PORT_A http://127.0.0.1:PORT_B   # two running servers, one Redis
//   node check.js --verify-ping-timeout [...]   # also waits ~45 s for a silent client to be dropped
//
// A member on server A must receive what a member on server B sends (through Redis), and the
// reverse. Prints one "ok: ..." line per check, then "N passed, 0 failed"; exits 1 on a failure.
// The run takes about 27 s because it waits for the server's first engine.io ping (25 s).

const { spawn } = require("node:child_process");
const http = require("node:http");
const net = require("node:net");
const path = require("node:path");
const WebSocket = require("ws");

const GROUP_PREFIX = "组内主动推送消息:";
const ECHO_PREFIX = "服务端主动推送消息:";
const PING_INTERVAL = 25000;
const PING_TIMEOUT = 20000;

let passed = 0;
function ok(what) {
  passed += 1;
  console.log(`ok: ${what}`);
}
class CheckFailed extends Error {}
function expect(cond, what) {
  if (!cond) throw new CheckFailed(what);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** One raw engine.io v4 / Socket.IO v5-protocol connection: every text frame is queued. */
class RawClient {
  constructor(base, room, name) {
    const wsBase = base.replace(/^http/, "ws");
    const query = room === null ? "" : `&room=${encodeURIComponent(room)}`;
    this.url = `${wsBase}/socket.io/?EIO=4&transport=websocket${query}`;
    this.name = name;
    this.frames = [];
    this.waiters = [];
    this.closed = null;
    this.autoPong = true;
    this.pings = [];
    this.openedAt = 0;
  }

  open() {
    return new Promise((resolve, reject) => {
      this.ws = new WebSocket(this.url, { perMessageDeflate: false });
      this.ws.on("open", () => {
        this.openedAt = Date.now();
        resolve();
      });
      this.ws.on("error", (err) => {
        if (!this.openedAt) reject(err);
      });
      this.ws.on("message", (data, isBinary) => {
        expect(!isBinary, `${this.name}: unexpected binary frame`);
        const text = data.toString("utf8");
        if (text === "2") {
          this.pings.push(Date.now());
          if (this.autoPong) this.ws.send("3");
        }
        this.frames.push(text);
        this.wake();
      });
      this.ws.on("close", (code, reason) => {
        this.closed = { code, reason: reason.toString(), at: Date.now() };
        this.wake();
      });
    });
  }

  wake() {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  send(text) {
    this.ws.send(text);
  }

  /** Waits for (and removes) the first queued frame matching `pred` (pings are skipped unless asked). */
  async next(pred, timeoutMs, what) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = this.frames.findIndex(pred);
      if (i >= 0) return this.frames.splice(i, 1)[0];
      if (this.closed) throw new CheckFailed(`${this.name}: closed (${this.closed.code}) waiting for ${what}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new CheckFailed(`${this.name}: timed out waiting for ${what}; got ${JSON.stringify(this.frames)}`);
      await new Promise((r) => {
        const t = setTimeout(r, left);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  /** Frames other than engine.io pings that arrived so far (and drops them). */
  drainNonPing() {
    const rest = this.frames.filter((f) => f !== "2");
    this.frames = [];
    return rest;
  }

  async waitClosed(timeoutMs) {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed && Date.now() < deadline) {
      await new Promise((r) => {
        const t = setTimeout(r, Math.max(1, deadline - Date.now()));
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
    return this.closed;
  }

  close() {
    if (this.ws && !this.closed) this.ws.terminate();
  }
}

/** Opens the WebSocket and performs the engine.io + Socket.IO handshake; returns the parsed open packet. */
async function handshake(client) {
  await client.open();
  const open = await client.next(() => true, 5000, "engine.io OPEN packet");
  expect(open.startsWith("0{"), `${client.name}: first frame should be 0{...}, got ${JSON.stringify(open)}`);
  const info = JSON.parse(open.slice(1));
  client.send("40");
  const connect = await client.next((f) => f.startsWith("4"), 5000, "Socket.IO CONNECT answer");
  expect(connect.startsWith("40{"), `${client.name}: CONNECT answer should be 40{...}, got ${JSON.stringify(connect)}`);
  const ack = JSON.parse(connect.slice(2));
  expect(typeof ack.sid === "string" && ack.sid.length > 0, `${client.name}: 40 answer without sid`);
  return { open, info, connect, ack };
}

const eventFrame = (name, arg) => "42" + JSON.stringify([name, arg]);

function httpGet(url) {
  return new Promise((resolve, reject) => {
    const req = http.get(url, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c) => (body += c));
      res.on("end", () => resolve({ status: res.statusCode, body }));
    });
    req.on("error", reject);
    req.setTimeout(2000, () => req.destroy(new Error("timeout")));
  });
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

async function waitFor(fn, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (await fn()) return;
    } catch (_) {
      // not up yet
    }
    if (Date.now() > deadline) throw new CheckFailed(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

/** Starts redis-server and two peers on free ports; returns their base URLs and a cleanup. */
async function spawnAll() {
  const children = [];
  const killAll = () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGTERM");
  };
  process.on("exit", killAll);
  // Servers first (and wait for them), then redis-server, so the servers log no Redis errors.
  const cleanup = async () => {
    const servers = children.slice(1).filter((c) => c.exitCode === null && c.signalCode === null);
    await Promise.all(servers.map((c) => new Promise((r) => c.once("exit", r).kill("SIGTERM"))));
    killAll();
  };
  const redisPort = await freePort();
  const redis = spawn("redis-server", ["--port", String(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
    stdio: ["ignore", "ignore", "inherit"],
  });
  redis.on("error", (err) => {
    console.error(`FAIL: cannot start redis-server: ${err.message}`);
    process.exit(1);
  });
  children.push(redis);
  await waitFor(
    () =>
      new Promise((resolve) => {
        const s = net.connect(redisPort, "127.0.0.1", () => {
          s.end();
          resolve(true);
        });
        s.on("error", () => resolve(false));
      }),
    10000,
    "redis-server",
  );
  const redisUrl = `redis://127.0.0.1:${redisPort}/0`;
  const bases = [];
  for (let i = 0; i < 2; i++) {
    const port = await freePort();
    const child = spawn(process.execPath, [path.join(__dirname, "server.js")], {
      env: { ...process.env, PORT: String(port), REDIS_URL: redisUrl },
      stdio: ["ignore", "inherit", "inherit"],
    });
    children.push(child);
    const base = `http://127.0.0.1:${port}`;
    await waitFor(async () => (await httpGet(`${base}/healthz`)).status === 200, 10000, `server on ${base}`);
    bases.push(base);
  }
  console.log(`started redis-server on ${redisUrl} and servers on ${bases.join(", ")}`);
  return { bases, cleanup };
}

async function run(baseA, baseB, verifyPingTimeout) {
  const clients = [];
  const mk = (base, room, name) => {
    const c = new RawClient(base, room, name);
    clients.push(c);
    return c;
  };
  try {
    for (const base of [baseA, baseB]) {
      const r = await httpGet(`${base}/healthz`);
      expect(r.status === 200, `GET ${base}/healthz answered ${r.status}`);
      const p = await httpGet(`${base}/socket.io/?EIO=4&transport=polling`);
      expect(p.status === 400, `polling should be refused, got ${p.status}`);
    }
    ok("GET /healthz is 200 on both servers; long-polling is refused (400)");

    const room = `g${process.pid}`;
    const a1 = mk(baseA, room, "A1");
    const b1 = mk(baseB, room, "B1");
    const a2 = mk(baseA, `${room}-other`, "A2");
    const hsA = await handshake(a1);
    const info = hsA.info;
    expect(typeof info.sid === "string", "open packet has a sid");
    expect(Array.isArray(info.upgrades) && info.upgrades.length === 0, `upgrades should be [], got ${JSON.stringify(info.upgrades)}`);
    expect(info.pingInterval === PING_INTERVAL, `pingInterval ${info.pingInterval}`);
    expect(info.pingTimeout === PING_TIMEOUT, `pingTimeout ${info.pingTimeout}`);
    expect(info.maxPayload === 65536, `maxPayload ${info.maxPayload}`);
    ok(`server's first frame: ${hsA.open}`);
    expect(hsA.ack.sid !== info.sid, "the Socket.IO sid differs from the engine.io sid");
    ok(`client sends 40, server answers: ${hsA.connect}`);
    await handshake(b1);
    await handshake(a2);
    ok("B1 (server B, same room) and A2 (server A, another room) connected");

    // Socket.IO joins the room synchronously before its 40 answer, and the classic Redis adapter
    // has every server PSUBSCRIBEd to all rooms, so a member can be reached right away.
    const x = "hello from B";
    const t0 = Date.now();
    b1.send(eventFrame("msg", x));
    const want = eventFrame("msg", GROUP_PREFIX + x);
    const gotA = await a1.next((f) => f !== "2", 3000, "the group message on A1");
    const tA = Date.now() - t0;
    expect(gotA === want, `A1 got ${JSON.stringify(gotA)}, want ${JSON.stringify(want)}`);
    ok(`B1 sends ${eventFrame("msg", x)} on server B; A1 on server A receives ${gotA} (${tA} ms)`);
    const gotB = await b1.next((f) => f !== "2", 3000, "the group message on B1 (sender)");
    expect(gotB === want, `B1 got ${JSON.stringify(gotB)}`);
    ok("the sender B1 receives its own message too (like a Channels group_send)");

    const y = 'quote " backslash \\ 中文 tab\t end';
    a1.send(eventFrame("msg", y));
    const gotB2 = await b1.next((f) => f !== "2", 3000, "the group message on B1");
    expect(JSON.parse(gotB2.slice(2))[1] === GROUP_PREFIX + y, `B1 got ${JSON.stringify(gotB2)}`);
    expect(gotB2 === eventFrame("msg", GROUP_PREFIX + y), "server frames are JSON.stringify output");
    await a1.next((f) => f !== "2", 3000, "A1's own copy");
    ok(`A1 -> B1 across servers with JSON escapes; raw frame received: ${gotB2}`);

    a1.send(eventFrame("echo", "ping?"));
    const echo = await a1.next((f) => f !== "2", 3000, "the echo");
    expect(echo === eventFrame("echo", ECHO_PREFIX + "ping?"), `echo got ${JSON.stringify(echo)}`);
    ok(`A1 sends 42["echo","ping?"], receives ${echo}`);

    // Burst: 200 messages from B1 must all reach A1, in order.
    const n = 200;
    for (let i = 0; i < n; i++) b1.send(eventFrame("msg", `burst ${i}`));
    for (let i = 0; i < n; i++) {
      const f = await a1.next((g) => g !== "2", 5000, `burst message ${i}`);
      expect(f === eventFrame("msg", `${GROUP_PREFIX}burst ${i}`), `burst ${i}: got ${f}`);
    }
    for (let i = 0; i < n; i++) await b1.next((g) => g !== "2", 5000, `B1's own burst message ${i}`);
    ok(`${n} messages sent on B reach A complete and in order`);

    await sleep(300);
    const leaked = a2.drainNonPing();
    expect(leaked.length === 0, `A2 (other room) got ${JSON.stringify(leaked)}`);
    ok("A2 in another room received nothing");

    // An event sent before the namespace CONNECT (40) is not delivered, and the server closes the
    // whole connection (socket.io Client.ondecoded: "invalid state" -> close()).
    const early = mk(baseA, room, "early");
    await early.open();
    await early.next((f) => f.startsWith("0{"), 5000, "open packet");
    early.send(eventFrame("msg", "too early"));
    const earlyClosed = await early.waitClosed(3000);
    await sleep(200);
    const leaked2 = a1.drainNonPing();
    expect(leaked2.length === 0, `an event before 40 was delivered: ${JSON.stringify(leaked2)}`);
    expect(earlyClosed, "the client that skipped 40 was not closed");
    ok(`an event sent before 40 is not delivered; the server closes the connection (close ${earlyClosed.code})`);

    // maxHttpBufferSize: a frame over 64 KiB closes the connection (ws maxPayload -> 1009).
    const big = mk(baseA, room, "big");
    await handshake(big);
    big.send(eventFrame("msg", "x".repeat(65 * 1024)));
    const closed = await big.waitClosed(3000);
    expect(closed && closed.code === 1009, `oversized frame: close ${JSON.stringify(closed)}`);
    ok(`a 65 KiB frame is refused with WebSocket close ${closed.code}`);

    let silent = null;
    if (verifyPingTimeout) {
      silent = mk(baseA, room, "silent");
      silent.autoPong = false;
      await handshake(silent);
    }

    // Heartbeat: the server sends "2" every pingInterval; the client must answer "3".
    const waitMs = PING_INTERVAL - (Date.now() - a1.openedAt) + 5000;
    console.log(`... waiting up to ${Math.round(waitMs / 1000)} s for the server's first ping`);
    await a1.next((f) => f === "2", waitMs, "engine.io PING (2)");
    const after = a1.pings[0] - a1.openedAt;
    expect(after >= PING_INTERVAL - 1000 && after <= PING_INTERVAL + 2000, `first ping after ${after} ms`);
    ok(`server sent "2" ${after} ms after the open packet; client answered "3"`);
    await sleep(500);
    b1.send(eventFrame("msg", "after ping"));
    const afterPing = await a1.next((f) => f !== "2", 3000, "a message after the ping");
    expect(afterPing === eventFrame("msg", GROUP_PREFIX + "after ping"), `got ${afterPing}`);
    ok("the connection that answered 3 still works after the ping");

    if (verifyPingTimeout) {
      const limit = PING_INTERVAL + PING_TIMEOUT + 5000 - (Date.now() - silent.openedAt);
      console.log(`... waiting up to ${Math.round(limit / 1000)} s for the silent client to be dropped`);
      const c = await silent.waitClosed(limit);
      expect(c, "the client that never answered 3 was not dropped");
      const t = c.at - silent.openedAt;
      expect(t >= PING_INTERVAL + PING_TIMEOUT - 1000, `dropped too early: ${t} ms`);
      ok(`a client that never answers "3" is closed ${t} ms after the open packet (close ${c.code})`);
    }
  } finally {
    for (const c of clients) c.close();
  }
}

async function main() {
  const args = process.argv.slice(2);
  const verifyPingTimeout = args.includes("--verify-ping-timeout");
  const bases = args.filter((a) => !a.startsWith("--"));
  let cleanup = async () => {};
  if (bases.length === 0) {
    const spawned = await spawnAll();
    bases.push(...spawned.bases);
    cleanup = spawned.cleanup;
  } else if (bases.length !== 2) {
    console.error("usage: node check.js [--verify-ping-timeout] [BASE_A BASE_B]");
    process.exit(2);
  }
  try {
    await run(bases[0], bases[1], verifyPingTimeout);
    console.log(`${passed} passed, 0 failed`);
  } catch (err) {
    console.log(`FAIL: ${err instanceof CheckFailed ? err.message : err.stack}`);
    console.log(`${passed} passed, 1 failed`);
    process.exitCode = 1;
  } finally {
    await cleanup();
  }
}

main();
