//! Parley's shared kernel: everything the role crates (`edge`, `auth-svc`,
//! `chat-svc`, `presence-svc`) have in common.
//!
//! Map of the crate:
//! - [`proto`]: the gRPC/protobuf types compiled from `proto/` by `build.rs`.
//! - [`protocol`]: the browser-facing JSON frames (the public contract).
//! - [`error`]: the one closed set of error codes and their gRPC/HTTP mapping.
//! - [`ids`], [`time`]: identifiers and clocks; [`names`]: the rule for
//!   every user-visible name.
//! - [`bus`], [`registry`], [`store`]: the backend traits, each with its
//!   embedded implementation (the Kafka/Redis/Mongo ones slot in beside them).
//! - [`backends`]: picks the implementations from configuration.
//! - [`discovery`], [`push`], [`grpc`]: how roles find, call and serve each other.
//! - [`config`], [`telemetry`], [`node`]: process set-up shared by every binary.
//!
//! The request flow: browser → edge (`protocol`) → gRPC role service →
//! `bus` (durable) → chat-svc consumer → `store` → `push` → edge → browser.

pub mod backends;
pub mod bus;
pub mod config;
#[cfg(feature = "conformance")]
#[doc(hidden)]
pub mod conformance;
pub mod discovery;
pub mod error;
pub mod grpc;
pub mod ids;
pub mod names;
pub mod node;
pub mod protocol;
pub mod push;
pub mod registry;
pub mod store;
pub mod telemetry;
pub mod time;

/// Generated protobuf and gRPC types (`parley.v1`).
#[allow(clippy::all, missing_docs, clippy::unwrap_used, clippy::expect_used)]
pub mod proto {
    tonic::include_proto!("parley.v1");

    /// The encoded descriptor set served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/parley_descriptor.bin"));
}

pub use error::{ApiError, ErrorCode};
