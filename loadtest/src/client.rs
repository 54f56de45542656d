//! A plain request/reply client for the phases around the run: loading the Lua
//! scripts, granting credits, reading balances for `--verify`. Pipelined in chunks.

use crate::resp::{self, Encoder, Reply};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Client {
    stream: TcpStream,
    rbuf: Vec<u8>,
    pub enc: Encoder,
    timeout: Duration,
}

impl Client {
    pub async fn connect(addr: &str, timeout: Duration) -> Result<Client, String> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connect {addr}: timed out"))?
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        Ok(Client {
            stream,
            rbuf: Vec::with_capacity(64 * 1024),
            enc: Encoder::default(),
            timeout,
        })
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
