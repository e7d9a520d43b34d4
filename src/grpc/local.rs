//! The in-process transport: the gRPC services this process serves, by the
//! address they are served on, so a caller in the same process (the
//! all-in-one's edge calling its own chat-svc, chat-svc pushing to its own
//! edge) reaches them with the same request and response types and the
//! same generated client, but without HTTP/2 framing, a socket or the
//! connection's own task. Issue 12 measured that loopback hop at about
//! 15 % of the all-in-one's CPU per message.
//!
//! One code path, two transports: callers still find instances in the
//! registry and take a `discovery::Routed` to one; it goes in
//! process when the address is served here (see [`served_at`]) and over
//! the network otherwise. Requests are still protobuf-encoded, so what a
//! local call exercises is what a remote one does, short of the wire.
//!
//! The table is process-wide because a bound socket address is: at most one
//! listener of this process holds it, so the address names the service
//! unambiguously, and tests that run several nodes in one process still
//! reach each through its own address.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use tonic::service::Routes;

/// Routes by address, each with the number of the [`Local`] that put it
/// there.
type Table = HashMap<String, (u64, Routes)>;

fn table() -> &'static Mutex<Table> {
    static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
    TABLE.get_or_init(Mutex::default)
}

/// `routes` served at `addr` (`ip:port`, as registered) until the guard is
/// dropped, which [`super::serve`] does when it stops serving: from then on
/// callers go over the network and find the port closed, as they would
/// find another process's.
#[must_use = "the services are reachable in process only while the guard lives"]
pub struct Local {
    addr: String,
    /// Which registration this is: a port closed and bound again by
    /// another server of the process must not lose that one's entry.
    number: u64,
}

impl Local {
    pub fn serve(addr: String, routes: Routes) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let number = NEXT.fetch_add(1, Ordering::Relaxed);
        table()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(addr.clone(), (number, routes));
        Self { addr, number }
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        let mut table = table().lock().unwrap_or_else(PoisonError::into_inner);
        if table
            .get(&self.addr)
            .is_some_and(|(n, _)| *n == self.number)
        {
            table.remove(&self.addr);
        }
    }
}

/// The services this process serves at `addr`, if it serves any there.
pub fn served_at(addr: &str) -> Option<Routes> {
    table()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(addr)
        .map(|(_, routes)| routes.clone())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_server_gone_from_an_address_does_not_delist_the_next_one_there() {
        let addr = "127.0.0.1:1".to_owned();
        let first = super::Local::serve(addr.clone(), tonic::service::Routes::default());
        let second = super::Local::serve(addr.clone(), tonic::service::Routes::default());
        drop(first);
        assert!(super::served_at(&addr).is_some());
        drop(second);
        assert!(super::served_at(&addr).is_none());
    }
}
