// The single chat of the tutorial's chatting.html: one socket on /room/123/, where the server
// echoes every text and closes on "exit".
"use strict";

// The tutorial's close button printed its own note besides the one from the close event.
window.channelsChat.start("/room/123/", "[连接已断开啦!]");
