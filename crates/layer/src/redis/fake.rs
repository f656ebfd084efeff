//! A fake Redis for the connections' unit tests: it accepts connections, reads the commands
//! sent on them and writes whatever a test gives it, so a test can answer as a real Redis
//! would not (garbage, refusals, replies cut anywhere).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::resp;

pub(crate) struct FakeRedis {
    listener: TcpListener,
}

impl FakeRedis {
    pub(crate) async fn start() -> Self {
        Self {
            listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        }
    }

    pub(crate) fn port(&self) -> u16 {
        self.listener.local_addr().unwrap().port()
    }

    /// The next connection made to it (within 5 s).
    pub(crate) async fn accept(&self) -> FakeConn {
        let (stream, _) = tokio::time::timeout(Duration::from_secs(5), self.listener.accept())
            .await
            .expect("no connection within 5 s")
            .unwrap();
        FakeConn {
            stream,
            buf: Vec::new(),
        }
    }
}

/// One connection to the fake.
pub(crate) struct FakeConn {
    stream: TcpStream,
    /// What was read past the commands taken so far.
    buf: Vec<u8>,
}

impl FakeConn {
    /// The next command sent, its arguments joined by spaces.
    pub(crate) async fn command(&mut self) -> String {
        loop {
            if let Ok(Some((_, used))) = resp::next(&self.buf) {
                let text = String::from_utf8_lossy(&self.buf[..used]).into_owned();
                self.buf.drain(..used);
                let args: Vec<&str> = text.split("\r\n").skip(2).step_by(2).collect();
                return args.join(" ").trim_end().to_owned();
            }
            let read = self.stream.read_buf(&mut self.buf).await.unwrap();
            assert!(read > 0, "the client closed the connection");
        }
    }

    pub(crate) async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Whether the client closes the connection within 5 s (what it sends meanwhile is read
    /// and dropped).
    pub(crate) async fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(5), self.stream.read_to_end(&mut rest));
        closed.await.is_ok()
    }
}
