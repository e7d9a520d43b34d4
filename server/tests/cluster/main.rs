//! Multi-process tests: every role in its own `parley` process (1 auth-svc,
//! 2 chat-svc, 1 presence-svc, 2 edges) on the real engines, with a real
//! nginx in front, as `scripts/cluster` runs them. Each test starts its own
//! cluster with its own topic, key and database prefixes, and they run one
//! at a time (scripts/test passes `--test-threads=1`): two cores hold one
//! cluster well, not four. Without `PARLEY_TEST_REAL` they are skipped,
//! saying so.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

#[path = "../system/helpers.rs"]
mod helpers;

mod harness;

mod cross_node;
mod failover;
mod fault_suite;
mod groups;
mod grpcurl;
