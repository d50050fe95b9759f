//! The JSON form of events: version 1 is the reference's System.Text.Json
//! output byte for byte; version 2 adds its fields to it.
//!
//! Writing is canonical: fields in the documented order, map keys in
//! ordinal order, strings escaped exactly as System.Text.Json's default
//! encoder does (HTML-sensitive characters `"&'+<>` and `` ` `` and every
//! non-ASCII character as `\uXXXX`). Reading is lenient as the reference
//! is: property names in any case, numbers also from numeric strings, the
//! event type by name in any case or by number, unknown fields ignored.

mod read;
mod write;

pub use read::{RpcRequest, decode, decode_rpc_request, decode_with_version};
pub use write::{
    DeadLetterView, RpcResponse, encode, encode_dead_letters, encode_into, encode_rpc_error,
    encode_rpc_response,
};
