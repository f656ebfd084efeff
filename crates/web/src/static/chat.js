// The WebSocket client shared by /chatone and /chatgroup.
//
// It does what the inline script of the tutorial's pages did, from a static file so the pages
// can forbid inline script (CSP `script-src 'self'`). Differences from the tutorial:
// - the URL comes from the page's location (ws: or wss:, same host), never a fixed address;
// - buttons are wired with addEventListener, not onclick attributes;
// - received text is added with textContent, so markup in a message stays text.
//
// Browser tests read two globals: window.wsState ("idle" until start() runs, then
// "connecting", "open", "error", "closed") and window.wsCloseCode (the close event's code).
"use strict";

window.wsState = "idle";
window.wsCloseCode = null;

window.channelsChat = (function () {
  // Appends one line of plain text to the message box.
  function appendLine(text) {
    var tag = document.createElement("div");
    tag.textContent = text;
    document.getElementById("message").appendChild(tag);
  }

  // Builds the socket URL from the page's own scheme and host (host includes the port).
  function socketUrl(path) {
    var scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return scheme + "//" + location.host + path;
  }

  // Connects to `path` and wires the send and close buttons.
  // `closeNote`, if not null, is appended when the user presses the close button.
  function start(path, closeNote) {
    var socket;
    window.wsState = "connecting";
    try {
      socket = new WebSocket(socketUrl(path));
    } catch (error) {
      window.wsState = "error";
      appendLine("[连接失败!]");
      return;
    }

    // Fired after the server accepts the connection (Channels' self.accept()).
    socket.addEventListener("open", function () {
      window.wsState = "open";
      appendLine("[连接成功!]");
    });
    // Fired when the connection fails; a "close" event always follows.
    socket.addEventListener("error", function () {
      window.wsState = "error";
      appendLine("[连接失败!]");
    });
    socket.addEventListener("message", function (event) {
      appendLine(String(event.data));
    });
    // Fired however the connection ends: server close, client close or failure.
    socket.addEventListener("close", function (event) {
      window.wsState = "closed";
      window.wsCloseCode = event.code;
      appendLine("[连接已断开!]");
    });

    document.getElementById("send").addEventListener("click", function () {
      // send() throws while connecting and silently drops data once closed.
      if (socket.readyState !== WebSocket.OPEN) {
        return;
      }
      socket.send(document.getElementById("txt").value);
    });
    document.getElementById("close").addEventListener("click", function () {
      var live =
        socket.readyState === WebSocket.CONNECTING || socket.readyState === WebSocket.OPEN;
      socket.close();
      if (live && closeNote !== null) {
        appendLine(closeNote);
      }
    });
  }

  return { start: start, appendLine: appendLine };
})();
