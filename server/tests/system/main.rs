//! Whole-system tests: every role in one process on port 0, driven by real
//! WebSocket clients (tokio-tungstenite) and a real HTTP client. All in one
//! test binary, so the build links once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

// Shared with the fault tests, which use parts this binary does not.
#[allow(dead_code)]
mod helpers;

mod landing;

mod auth;
mod bad_input;
mod groups;
mod lifecycle;
mod messaging;
mod notifications;
mod operations;
mod presence;
mod pushback;
mod restart;
mod search;
mod startup;
