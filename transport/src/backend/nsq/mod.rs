//! NSQ, through a client of our own (no maintained Rust NSQ client exists, and the TCP
//! protocol is small). So far: the protocol's frame codec (`protocol.rs`); the backend
//! (`kind = "nsq"`) is not there yet.

pub mod protocol;
