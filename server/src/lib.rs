//! # creditd (server)
//!
//! Adapts the pure engine to the network: the RESP codec, connections with
//! pipelining and limits, the command table, the config file, auth, HTTP
//! probes and metrics, the journal (the `creditd-journal` crate) behind the
//! engine and snapshots, and the Redis write-behind.

#![forbid(unsafe_code)]

pub mod app;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod conn;
pub mod conn_threads;
pub mod datadir;
pub mod dispatch;
pub mod error;
pub mod formats;
pub mod http;
pub mod info;
pub mod lease;
pub mod metrics;
pub mod multi;
pub mod node;
pub mod persist;
pub mod read_ahead;
pub mod redis_reply;
pub mod resp;
pub mod server;
pub mod stop;
pub mod writebehind;
