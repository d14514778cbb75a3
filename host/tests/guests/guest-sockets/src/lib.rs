//! Attack: opens a TCP connection to 127.0.0.1:5432 (a database port) inside
//! `score`, so the component imports `wasi:sockets`.
//!
//! The host must give plugins no sockets: refuse the component at upload
//! because of the import, or deny every socket operation so the connect fails.
//! Outbound network goes through the `http` import and its allowlist only.

use cairn_sdk::prelude::*;

include!("../../hostile_scorer.rs");

hostile_scorer!("guest-sockets", {
    match std::net::TcpStream::connect("127.0.0.1:5432") {
        Ok(_) => Ok(Score { value: 1.0, reasons: vec!["guest-sockets: connected to 127.0.0.1:5432".into()] }),
        Err(e) => Err(PluginError::permanent(format!("guest-sockets: connect failed: {e}"))),
    }
});
