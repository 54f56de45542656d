//! A plain request/reply client for the phases around the run: loading the Lua
//! scripts, granting credits, reading balances for `--verify`. Pipelined in chunks.
//! It also opens the load connections, so every connection authenticates the
//! same way.

use crate::resp::{self, Encoder, Reply};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What every connection sends as `AUTH [user] token` before anything else.
/// No `Debug`: the token must not end up in a message.
#[derive(Clone)]
pub struct Auth {
    pub user: Option<String>,
    pub token: String,
}

/// Where the server is and how to authenticate: what every connection of a
/// run (setup, load, `--verify`) is opened with.
#[derive(Clone)]
pub struct Endpoint {
    pub addr: String,
    pub auth: Option<Auth>,
}

impl Endpoint {
    pub async fn connect(&self, timeout: Duration) -> Result<Client, String> {
        Client::connect(&self.addr, timeout, self.auth.as_ref()).await
    }
}

pub struct Client {
    stream: TcpStream,
    rbuf: Vec<u8>,
    pub enc: Encoder,
    timeout: Duration,
}

impl Client {
    /// Connects and, with `auth`, authenticates. A refused AUTH is an error
    /// that quotes the server's reply (e.g. `WRONGPASS ...`).
    pub async fn connect(
        addr: &str,
        timeout: Duration,
        auth: Option<&Auth>,
    ) -> Result<Client, String> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connect {addr}: timed out"))?
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let mut client = Client {
            stream,
            rbuf: Vec::with_capacity(64 * 1024),
            enc: Encoder::default(),
            timeout,
        };
        if let Some(auth) = auth {
            let reply = match &auth.user {
                Some(user) => {
                    client
                        .call(&[b"AUTH", user.as_bytes(), auth.token.as_bytes()])
                        .await
                }
                None => client.call(&[b"AUTH", auth.token.as_bytes()]).await,
            }
            .map_err(|e| format!("AUTH at {addr}: {e}"))?;
            if let Reply::Error(message) = reply {
                return Err(format!("{addr} refused the token: {message}"));
            }
        }
        Ok(client)
    }

    /// The connection itself, for the load loop (which has its own buffers).
    /// Only between exchanges: every reply read so far has been consumed.
    pub fn into_stream(self) -> TcpStream {
        debug_assert!(self.rbuf.is_empty(), "unread reply bytes");
        self.stream
    }

    /// Sends what is in `enc` (`n` commands) and reads their `n` replies.
    pub async fn exchange(&mut self, n: usize) -> Result<Vec<Reply>, String> {
        let fut = async {
            self.stream
                .write_all(&self.enc.buf)
                .await
                .map_err(|e| format!("write: {e}"))?;
            self.enc.clear();
            let mut out = Vec::with_capacity(n);
            let mut pos = 0;
            while out.len() < n {
                match resp::parse(&self.rbuf[pos..]).map_err(|e| e.to_string())? {
                    Some((r, used)) => {
                        pos += used;
                        out.push(r);
                    }
                    None => {
                        self.rbuf.drain(..pos);
                        pos = 0;
                        self.rbuf.reserve(64 * 1024);
                        let got = self
                            .stream
                            .read_buf(&mut self.rbuf)
                            .await
                            .map_err(|e| format!("read: {e}"))?;
                        if got == 0 {
                            return Err("the server closed the connection".to_string());
                        }
                    }
                }
            }
            self.rbuf.drain(..pos);
            Ok(out)
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| format!("no reply within {:?}", self.timeout))?
    }

    /// One command, one reply.
    pub async fn call(&mut self, args: &[&[u8]]) -> Result<Reply, String> {
        self.enc.command(args);
        Ok(self.exchange(1).await?.remove(0))
    }
}
