// The WebSocket client shared by /chatone and /chatgroup.
//
// It does what the inline script of the tutorial's pages did, from a static file so the pages
// can forbid inline script (CSP `script-src 'self'`). Differences from the tutorial:
// - the URL comes from the page's location (ws: or wss:, same host), never a fixed address;
// - buttons are wired with addEventListener, not onclick attributes;
// - received text is added with textContent, so markup in a message stays text;
// - after an unexpected close the page reconnects by itself (see "Reconnect policy" below) and
//   shows the connection state in #status.
//
// Reconnect policy (the numbers are also the Rust constants of channels_web::reconnect, and a
// unit test keeps the two in step):
// - Reconnect after close codes 1001 (going away: shutdown or drain), 1006 (abnormal: no close
//   frame, e.g. a killed replica or a refused connection), 1011 (internal error), 1012 (service
//   restart), 1013 (try again later: the channel layer is unavailable), 4008 (slow consumer),
//   4009 (no pong: the server took the connection for dead) and 4401 (token expired: with
//   identity on, a new token is fetched first).
//   Every other code is final: 1000 (normal, e.g. the echo chat's "exit"), 1003, 1008, 1009,
//   4400 (invalid group name), ... And the close button stops reconnecting for good.
// - Exponential backoff with full jitter (AWS "Exponential Backoff and Jitter"): retry number
//   n (1, 2, 3, ...) waits random(0, min(CAP_MS, BASE_MS * 2^n)), with BASE_MS = 500 and
//   CAP_MS = 15000: up to 1 s, 2 s, 4 s, 8 s, then up to 15 s for every later retry.
// - After 1001 or 1012 (a deliberate drain: other replicas are up) the first retry waits only
//   random(0, BASE_MS), still jittered so that thousands of clients do not return in lockstep.
// - The retry number goes back to 1 once a connection has stayed open for STABLE_MS = 5000. It
//   is not reset by a mere successful open, so a server that accepts and closes at once (1011,
//   or 1013 when the group cannot be joined) still sees growing delays.
// - A reconnect opens the same path, so the group page rejoins its group: the server joins the
//   group named in the URL on connect.
//
// Identity (only when the page has an #identity data block, that is when the server runs with
// --page-token-url): before each connect the page fetches a connection token from the Django
// token view on the same origin (with the session cookie). 200 {"token", "name"}: it connects
// with the subprotocol pair ["bearer", token] (the token stays out of the URL) and shows who is
// signed in. 401/403: it says "not signed in" with a link to Django's login, and stops. Other
// answers or a network failure: it retries with the backoff below. After 4401 (token expired)
// it fetches a new token and reconnects. A socket that fails before opening, with a fresh token,
// was refused (403: a group its token does not allow) or hit a replica that is down: the page
// checks the token's groups and says "not allowed in this group" and stops when the group is
// not among them, else retries.
//
// History (only when the page has a #history data block, that is when the server runs with
// --history-size; the group chat only): the first connect asks for the group's last K messages
// (?history=K) and shows them; every frame is then JSON {"type": "message", "text", "offset",
// "epoch"} and the page keeps the offset and epoch of the latest one. Every reconnect resumes
// from them (?since=OFFSET&epoch=EPOCH): the server first sends {"type": "recovery",
// "recovered": true, "missed": M} and the M missed messages, or "recovered": false with a reason
// ("epoch": the history restarted; "window": too much was missed), which the page shows as a
// line. 4010 (a message was missed while connected) reconnects at once to recover it.
//
// Presence (only when the page has a #presence data block, that is when the server runs with
// --presence; the group chat only): the socket asks for it (?presence=1), frames are JSON, the
// first {"type": "presence", "members": [...]} fills #online, and {"type": "join"} /
// {"type": "leave"} frames update it: the count and the names, each name once however many
// tabs its user has open.
//
// Browser tests read these globals:
// - window.wsState: "idle" until start() runs, then "connecting", "open", "error", "closed",
//   "reconnecting" while waiting to retry, and "refused" when identity says no;
// - window.wsUser: the signed-in name (identity on), else null;
// - window.wsCloseCode: the code of the last close event;
// - window.wsConnects: how many times a socket opened;
// - window.wsReconnectDelays: every retry delay chosen, in ms;
// - window.wsPosition: {"offset", "epoch"} of the latest group message (history on), else null;
// - window.wsRecovery: the latest recovery frame (history on), else null;
// - window.wsOnline: the members online by channel (presence on), else null.
"use strict";

window.wsState = "idle";
window.wsCloseCode = null;
window.wsConnects = 0;
window.wsReconnectDelays = [];
window.wsUser = null;
window.wsPosition = null;
window.wsRecovery = null;
window.wsOnline = null;

window.channelsChat = (function () {
  var BASE_MS = 500;
  var CAP_MS = 15000;
  var STABLE_MS = 5000;
  var RECONNECT_CODES = [1001, 1006, 1011, 1012, 1013, 4008, 4009, 4010, 4401];
  var DRAIN_CODES = [1001, 1012, 4010];

  // Whether a close with `code` should be followed by a reconnect.
  function shouldReconnect(code) {
    return RECONNECT_CODES.indexOf(code) !== -1;
  }

  // The delay in ms before retry number `attempt` (1 for the first retry) after a close with
  // `code`. `random` returns a number in [0, 1), like Math.random (the default); pass another
  // to test. The result is an integer in [0, ceiling), where the ceiling is
  // min(CAP_MS, BASE_MS * 2^attempt), or BASE_MS for the first retry after a drain.
  function backoffDelay(attempt, code, random) {
    var draw = typeof random === "function" ? random : Math.random;
    var n = Math.max(1, Math.floor(Number(attempt)) || 1);
    var ceiling;
    if (n === 1 && DRAIN_CODES.indexOf(code) !== -1) {
      ceiling = BASE_MS;
    } else {
      ceiling = Math.min(CAP_MS, BASE_MS * Math.pow(2, n));
    }
    var r = Number(draw());
    if (!(r >= 0)) {
      r = 0;
    }
    if (r >= 1) {
      r = 0.999999;
    }
    return Math.floor(r * ceiling);
  }

  // Appends one line of plain text to the message box.
  function appendLine(text) {
    var tag = document.createElement("div");
    tag.textContent = text;
    document.getElementById("message").appendChild(tag);
  }

  // Shows the connection state in #status (Chinese / English); `state` also goes to
  // data-state for styling.
  function showStatus(state, text) {
    var status = document.getElementById("status");
    if (status === null) {
      return;
    }
    status.textContent = text;
    status.setAttribute("data-state", state);
  }

  // Builds the socket URL from the page's own scheme and host (host includes the port).
  function socketUrl(path) {
    var scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return scheme + "//" + location.host + path;
  }

  // The #identity data block ({"token_url": ...}), or null when the page is anonymous.
  function identityConfig() {
    var block = document.getElementById("identity");
    if (block === null) {
      return null;
    }
    var config = JSON.parse(block.textContent);
    return config && typeof config.token_url === "string" ? config : null;
  }

  // The #history data block ({"history": K}), or null when the server keeps no history.
  function historyConfig() {
    var block = document.getElementById("history");
    if (block === null) {
      return null;
    }
    var config = JSON.parse(block.textContent);
    return config && typeof config.history === "number" && config.history > 0 ? config : null;
  }

  // Whether the page has a #presence data block.
  function presenceConfig() {
    return document.getElementById("presence") !== null;
  }

  // Shows who is online in #online: the count of distinct users and their names.
  function showOnline() {
    var box = document.getElementById("online");
    if (box === null || window.wsOnline === null) {
      return;
    }
    var names = {};
    Object.keys(window.wsOnline).forEach(function (channel) {
      var member = window.wsOnline[channel];
      names[member.user] = member.name;
    });
    var list = Object.keys(names).map(function (user) {
      return names[user];
    });
    list.sort();
    box.textContent = "在线 / online: " + list.length + (list.length ? " (" + list.join(", ") + ")" : "");
  }

  // Whether a token's `groups` (exact names, or prefixes ending in "*") allow the group of
  // `path` (/group/<id>/); paths without a group are always allowed.
  function groupAllowed(groups, path) {
    var match = /^\/group\/([^/]+)\/$/.exec(path);
    if (match === null) {
      return true;
    }
    var group = decodeURIComponent(match[1]);
    return (groups || []).some(function (pattern) {
      if (pattern.slice(-1) === "*") {
        return group.indexOf(pattern.slice(0, -1)) === 0;
      }
      return pattern === group;
    });
  }

  // Connects to `path`, reconnects after unexpected closes, and wires the send and close
  // buttons. `closeNote`, if not null, is appended when the user presses the close button.
  function start(path, closeNote) {
    var socket = null;
    var retryTimer = null;
    var attempt = 0;
    var openedAt = null;
    var stopped = false;

    function disconnected(code) {
      window.wsState = "closed";
      var suffix = code === null ? "" : " (" + code + ")";
      showStatus("disconnected", "已断开 / disconnected" + suffix);
    }

    function scheduleRetry(code) {
      attempt += 1;
      var delay = backoffDelay(attempt, code, Math.random);
      window.wsReconnectDelays.push(delay);
      window.wsState = "reconnecting";
      var seconds = (delay / 1000).toFixed(1);
      showStatus(
        "reconnecting",
        "重新连接中 (第 " + attempt + " 次, " + seconds + " 秒后) / reconnecting (attempt " +
          attempt + ", in " + seconds + " s)"
      );
      retryTimer = setTimeout(function () {
        retryTimer = null;
        connect();
      }, delay);
    }

    var identity = identityConfig();
    var history = historyConfig();
    var presence = presenceConfig();
    var token = null;

    // The socket URL's query: with history, the recent messages on the first connect and a
    // resume from the latest position after that.
    function historyQuery() {
      var params = [];
      if (presence) {
        params.push("presence=1");
      }
      if (history !== null) {
        var position = window.wsPosition;
        if (position === null) {
          params.push("history=" + history.history);
        } else {
          params.push("since=" + position.offset, "epoch=" + encodeURIComponent(position.epoch));
        }
      }
      return params.length ? "?" + params.join("&") : "";
    }

    // A frame from the server: plain text, or with history the JSON envelope.
    function received(data) {
      if ((history === null && !presence) || typeof data !== "string") {
        appendLine(String(data));
        return;
      }
      var frame;
      try {
        frame = JSON.parse(data);
      } catch (error) {
        appendLine(data);
        return;
      }
      if (frame.type === "presence") {
        window.wsOnline = {};
        (frame.members || []).forEach(function (member) {
          window.wsOnline[member.channel] = member;
        });
        showOnline();
        return;
      }
      if (frame.type === "join" || frame.type === "leave") {
        if (window.wsOnline !== null) {
          if (frame.type === "join") {
            window.wsOnline[frame.channel] = frame;
          } else {
            delete window.wsOnline[frame.channel];
          }
          showOnline();
        }
        return;
      }
      if (frame.type === "recovery") {
        window.wsRecovery = frame;
        if (!frame.recovered) {
          appendLine(
            "[部分消息未能恢复 / some messages could not be recovered (" + frame.reason + ")]"
          );
        }
        return;
      }
      if (typeof frame.offset === "number" && typeof frame.epoch === "string") {
        window.wsPosition = { offset: frame.offset, epoch: frame.epoch };
      }
      appendLine(String(frame.text));
    }

    // Identity says no: say so, with a link to Django's login, and stop reconnecting.
    function refused(text) {
      stopped = true;
      window.wsState = "refused";
      showStatus("refused", text);
      var status = document.getElementById("status");
      if (status !== null) {
        var link = document.createElement("a");
        link.href = "/accounts/login/?next=" + encodeURIComponent(location.pathname + location.search);
        link.textContent = " 登录 / log in";
        status.appendChild(link);
      }
    }

    // Fetches a connection token, then opens the socket with it.
    function connectWithToken() {
      window.wsState = "connecting";
      showStatus("connecting", "获取令牌 / fetching a token");
      fetch(identity.token_url, {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      })
        .then(function (response) {
          if (response.status === 401 || response.status === 403) {
            refused("未登录 / not signed in");
            return null;
          }
          if (!response.ok) {
            throw new Error("token view answered " + response.status);
          }
          return response.json();
        })
        .then(function (answer) {
          if (answer === null || stopped) {
            return;
          }
          token = answer;
          window.wsUser = answer.name || null;
          if (!groupAllowed(answer.groups, path)) {
            refused("不允许加入此群组 / not allowed in this group (" + window.wsUser + ")");
            return;
          }
          open(answer.token);
        })
        .catch(function () {
          if (!stopped) {
            scheduleRetry(1006);
          }
        });
    }

    function connect() {
      if (identity !== null) {
        connectWithToken();
        return;
      }
      open(null);
    }

    function open(bearer) {
      var ws;
      window.wsState = "connecting";
      showStatus("connecting", "连接中 / connecting");
      try {
        var url = socketUrl(path) + historyQuery();
        ws = bearer === null ? new WebSocket(url) : new WebSocket(url, ["bearer", bearer]);
      } catch (error) {
        // A malformed URL: retrying would fail the same way.
        socket = null;
        appendLine("[连接失败!]");
        window.wsState = "error";
        showStatus("disconnected", "已断开 / disconnected");
        return;
      }
      socket = ws;
      openedAt = null;

      // Fired after the server accepts the connection (Channels' self.accept()).
      ws.addEventListener("open", function () {
        if (ws !== socket) {
          return;
        }
        openedAt = Date.now();
        window.wsConnects += 1;
        window.wsState = "open";
        if (window.wsUser !== null) {
          showStatus("open", "已连接: " + window.wsUser + " / connected as " + window.wsUser);
        } else {
          showStatus("open", "已连接 / connected");
        }
        appendLine("[连接成功!]");
      });
      // Fired when the connection fails; a "close" event always follows.
      ws.addEventListener("error", function () {
        if (ws !== socket) {
          return;
        }
        window.wsState = "error";
        appendLine("[连接失败!]");
      });
      ws.addEventListener("message", function (event) {
        if (ws !== socket) {
          return;
        }
        received(event.data);
      });
      // Fired however the connection ends: server close, client close or failure.
      ws.addEventListener("close", function (event) {
        if (ws !== socket) {
          return;
        }
        window.wsCloseCode = event.code;
        appendLine("[连接已断开!]");
        if (openedAt !== null && Date.now() - openedAt >= STABLE_MS) {
          attempt = 0;
        }
        openedAt = null;
        if (stopped || !shouldReconnect(event.code)) {
          disconnected(event.code);
          return;
        }
        scheduleRetry(event.code);
      });
    }

    document.getElementById("send").addEventListener("click", function () {
      // send() throws while connecting and silently drops data once closed.
      if (socket === null || socket.readyState !== WebSocket.OPEN) {
        return;
      }
      socket.send(document.getElementById("txt").value);
    });
    document.getElementById("close").addEventListener("click", function () {
      stopped = true;
      if (retryTimer !== null) {
        clearTimeout(retryTimer);
        retryTimer = null;
        disconnected(null);
      }
      if (socket === null) {
        return;
      }
      var live =
        socket.readyState === WebSocket.CONNECTING || socket.readyState === WebSocket.OPEN;
      socket.close();
      if (live && closeNote !== null) {
        appendLine(closeNote);
      }
    });

    connect();
  }

  return {
    start: start,
    appendLine: appendLine,
    backoffDelay: backoffDelay,
    shouldReconnect: shouldReconnect,
    policy: {
      baseMs: BASE_MS,
      capMs: CAP_MS,
      stableMs: STABLE_MS,
      reconnectCodes: RECONNECT_CODES.slice(),
      drainCodes: DRAIN_CODES.slice(),
    },
  };
})();
