//! What the interop tests share: the order a foreign client sends, and what a subscriber
//! saw of it.

use serde::{Deserialize, Serialize};
use transport::{Context, Headers};

/// The JSON payload foreign clients publish and read.
#[derive(Debug, PartialEq, Deserialize, Serialize)]
pub struct Order {
    pub id: u64,
    pub item: String,
}

/// An order as a subscriber received it, with what its context said.
#[derive(Debug)]
pub struct Seen {
    pub order: Order,
    pub headers: Headers,
    pub key: Option<String>,
    pub id: Option<String>,
}

impl Seen {
    /// `order` with its message's headers, key and id.
    pub fn of(order: Order, ctx: &Context) -> Self {
        Seen {
            order,
            headers: ctx.headers().clone(),
            key: ctx.key().map(str::to_string),
            id: ctx.message_id().map(str::to_string),
        }
    }
}
