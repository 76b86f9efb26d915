//! Procedural macros of the `transport` framework: `#[transport::service]` and
//! `#[transport::subscriber]`. Use them through the `transport` crate.
//!
//! Each macro parses, checks (collecting every error, each on the user's own token),
//! then expands. When the input is wrong, the item is still emitted unchanged next to
//! the errors, so editors and the rest of the crate keep working.

mod args;
mod expand;
mod service;
mod signature;
mod ws;

use proc_macro::TokenStream;

/// Marks an inherent `impl` block whose `async fn` methods carry `#[subscriber(...)]`.
///
/// Each such method is registered at link time and runs on the instance given to
/// `App::service`. Methods carrying `#[ws(message = CONST)]` handle WebSocket messages
/// instead (feature `websocket`): `WsServerBuilder::service` registers them all.
#[proc_macro_attribute]
pub fn service(args: TokenStream, item: TokenStream) -> TokenStream {
    service::expand(args.into(), item.into()).into()
}

/// Registers an `async fn` as a subscriber:
/// `#[subscriber(topic = "t", group = "g", codec = "json", reply = "r")]`.
///
/// Instead of `topic`, `mqtt_filter = "/hfp/v2/+/bus/#"` subscribes to an MQTT topic
/// filter (`+` one level, `#` the rest), served by the mqtt and memory backends;
/// `Context::topic` then gives each message's concrete topic.
///
/// On a free function it stands alone; on a method, the `impl` block needs
/// `#[transport::service]`.
#[proc_macro_attribute]
pub fn subscriber(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::free_function(args.into(), item.into()).into()
}
