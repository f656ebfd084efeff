// The group chat of the tutorial's groupchatting.html: one socket on /group/<id>/.
//
// The id comes from the page's JSON data block (#group-id), never from text spliced into
// script, and is percent-encoded for the path. With no id (null) the page shows a note and
// does not connect, so window.wsState stays "idle".
//
// After an unexpected close chat.js reconnects to the same path, and the server joins the group
// named in the path on every connect, so a reconnect also rejoins the group.
"use strict";

(function () {
  var groupId = JSON.parse(document.getElementById("group-id").textContent);
  if (typeof groupId !== "string" || groupId === "") {
    return;
  }
  // The "[连接已断开!]" line comes from the close event, so the button adds no note of its own.
  window.channelsChat.start("/group/" + encodeURIComponent(groupId) + "/", null);
})();
