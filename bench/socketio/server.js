"use strict";
// Minimal Socket.IO 4 peer for the channels-rs benchmark (issue 5): the seed protocol's group chat
// as a Socket.IO app, replicas sharing rooms through the classic @socket.io/redis-adapter.
//
//   PORT=9001 REDIS_URL=redis://127.0.0.1:6399/0 node server.js
//
// - A client connects to ws://HOST:PORT/socket.io/?EIO=4&transport=websocket&room=G (WebSocket
//   transport only, no long-polling) and joins room G when its namespace CONNECT (`40`) arrives.
// - Event "msg" with a string X: io.to(G).emit("msg", "组内主动推送消息:" + X), reaching every
//   member of G on every replica (the sender included, like a Channels group_send).
// - Event "echo" with a string X: emits "echo" with "服务端主动推送消息:" + X back to that socket.
// - GET /healthz answers 200 "ok"; the port is opened only once both Redis clients are connected,
//   so a 200 also means "ready".
// Nothing is logged per connection or per message. See README.md for the wire framing.

const http = require("node:http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const PORT = Number.parseInt(process.env.PORT || "9001", 10);
const HOST = process.env.HOST || "127.0.0.1";
const REDIS_URL = process.env.REDIS_URL || "redis://127.0.0.1:6379/0";

const GROUP_PREFIX = "组内主动推送消息:";
const ECHO_PREFIX = "服务端主动推送消息:";

function log(...args) {
  console.error(`[socketio-peer ${process.pid}]`, ...args);
}

async function main() {
  const pubClient = createClient({ url: REDIS_URL });
  const subClient = pubClient.duplicate();
  // Errors are logged (not per message: only when Redis misbehaves); node-redis reconnects itself.
  pubClient.on("error", (err) => log("redis pub client error:", err.message));
  subClient.on("error", (err) => log("redis sub client error:", err.message));
  await Promise.all([pubClient.connect(), subClient.connect()]);

  const httpServer = http.createServer((req, res) => {
    // Socket.IO intercepts /socket.io/ before this handler; everything else lands here.
    if (req.method === "GET" && (req.url === "/healthz" || req.url.startsWith("/healthz?"))) {
      res.writeHead(200, { "content-type": "text/plain" });
      res.end("ok");
      return;
    }
    res.writeHead(404, { "content-type": "text/plain" });
    res.end("not found");
  });

  const io = new Server(httpServer, {
    path: "/socket.io/",
    transports: ["websocket"],
    allowUpgrades: false,
    perMessageDeflate: false,
    httpCompression: false,
    maxHttpBufferSize: 64 * 1024,
    serveClient: false,
    // Socket.IO 4 defaults, spelled out because the load generator must follow them.
    pingInterval: 25000,
    pingTimeout: 20000,
    adapter: createAdapter(pubClient, subClient),
  });

  io.on("connection", (socket) => {
    const room = socket.handshake.query.room;
    const joined = typeof room === "string" && room.length > 0 ? room : null;
    if (joined !== null) socket.join(joined);

    socket.on("msg", (x) => {
      if (joined === null || typeof x !== "string") return;
      io.to(joined).emit("msg", GROUP_PREFIX + x);
    });
    socket.on("echo", (x) => {
      if (typeof x !== "string") return;
      socket.emit("echo", ECHO_PREFIX + x);
    });
  });

  await new Promise((resolve, reject) => {
    httpServer.once("error", reject);
    // BACKLOG (optional): listen backlog; Node's default is 511. bench/peers.sh passes one.
    const backlog = process.env.BACKLOG ? Number.parseInt(process.env.BACKLOG, 10) : undefined;
    httpServer.listen({ port: PORT, host: HOST, backlog }, resolve);
  });
  log(`listening on http://${HOST}:${PORT} (redis ${REDIS_URL})`);

  const shutdown = (signal) => {
    log(`${signal}: closing`);
    io.close();
    Promise.allSettled([pubClient.quit(), subClient.quit()]).finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on("SIGTERM", () => shutdown("SIGTERM"));
  process.on("SIGINT", () => shutdown("SIGINT"));
}

main().catch((err) => {
  log("fatal:", err && err.stack ? err.stack : err);
  process.exit(1);
});
