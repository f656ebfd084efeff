// The single chat of the tutorial's chatting.html: one socket on /room/123/, where the server
// echoes every text and closes on "exit". That close has code 1000, so chat.js does not
// reconnect after it; it does reconnect after a server shutdown (1001) or a lost connection.
"use strict";

// The tutorial's close button printed its own note besides the one from the close event.
window.channelsChat.start("/room/123/", "[连接已断开啦!]");
