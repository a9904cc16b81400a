//! Serving a node-local HTTP endpoint (metrics, the probes, the capture API) with the bounds a
//! shared node needs: a cap on connections at once and a cap per peer address (past either,
//! new ones are closed at once and counted), a time limit to send a request's head, and a
//! lifetime for each connection, so that idle or slow clients cannot hold the agent's
//! descriptors. An endpoint behind a token takes a slot of its total only once a request
//! authenticated ([`Slot`]): clients without the token cannot fill it.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Extension, Router};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use prometheus::IntCounter;
use tokio::{
    net::TcpListener,
    sync::{OwnedSemaphorePermit, Semaphore},
};

#[derive(Clone, Copy, Debug)]
pub struct EndpointLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Connections one peer address holds at once (`--max-connections-per-peer`).
    pub max_per_peer: usize,
    /// Time to send a request's head, and the lifetime of a connection (keep-alive included).
    pub timeout: Duration,
}

/// Peer addresses with open connections tracked at most; past it a new peer's connection is
/// refused (counted as a per-peer refusal) until one closes.
const MAX_PEERS: usize = 4096;

/// The counters of refused connections, by the bound that refused them.
#[derive(Clone, Default)]
pub struct Refusals {
    /// `--endpoint-max-connections`.
    pub total: Option<IntCounter>,
    /// `--max-connections-per-peer` (and the peer table's own bound).
    pub per_peer: Option<IntCounter>,
}

/// Whether the total is taken at accept (`Accept`) or by the first request that
/// authenticates (`AfterAuth`, see [`Slot`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotPolicy {
    Accept,
    AfterAuth,
}

/// The peer of a request's connection (a request extension).
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub IpAddr);

/// A connection's share of the endpoint's total, taken by the first request that
/// authenticated (a request extension on endpoints served with [`SlotPolicy::AfterAuth`]).
#[derive(Clone)]
pub struct Slot {
    permit: Arc<Mutex<Option<OwnedSemaphorePermit>>>,
    slots: Arc<Semaphore>,
    refused: Option<IntCounter>,
}

impl Slot {
    /// Takes the connection's slot unless it holds one; `false` (counted) when every slot is
    /// taken.
    pub fn take(&self) -> bool {
        let mut p = self.permit.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_some() {
            return true;
        }
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => {
                *p = Some(permit);
                true
            }
            Err(_) => {
                if let Some(c) = &self.refused {
                    c.inc();
                }
                false
            }
        }
    }
}

/// Open connections per peer address.
#[derive(Default)]
struct Peers(Mutex<HashMap<IpAddr, usize>>);

impl Peers {
    /// Counts a connection of `peer` in, unless it holds `max` already (or the table is full).
    fn enter(&self, peer: IpAddr, max: usize) -> bool {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !m.contains_key(&peer) && m.len() >= MAX_PEERS {
            return false;
        }
        let n = m.entry(peer).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    fn leave(&self, peer: IpAddr) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                m.remove(&peer);
            }
        }
    }
}

/// Serves `app` on `listener` until the runtime stops.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: EndpointLimits,
    refused: Refusals,
    policy: SlotPolicy,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let peers = Arc::new(Peers::default());
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors and the like: wait instead of spinning.
                tracing::warn!("accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let peer = addr.ip();
        if !peers.enter(peer, limits.max_per_peer.max(1)) {
            if let Some(c) = &refused.per_peer {
                c.inc();
            }
            drop(stream);
            continue;
        }
        let permit = match policy {
            SlotPolicy::Accept => match slots.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    if let Some(c) = &refused.total {
                        c.inc();
                    }
                    peers.leave(peer);
                    drop(stream);
                    continue;
                }
            },
            SlotPolicy::AfterAuth => None,
        };
        let slot = Slot {
            permit: Arc::new(Mutex::new(permit)),
            slots: slots.clone(),
            refused: refused.total.clone(),
        };
        let conn_app = app
            .clone()
            .layer(Extension(slot))
            .layer(Extension(Peer(peer)));
        let svc = TowerToHyperService::new(conn_app);
        let peers = peers.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.timeout)
                .serve_connection(TokioIo::new(stream), svc);
            // Past its lifetime a connection is dropped, whatever it was doing.
            let _ = tokio::time::timeout(limits.timeout, conn).await;
            peers.leave(peer);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_holds_at_most_its_share_and_gets_it_back_as_connections_close() {
        let peers = Peers::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!((0..3).all(|_| peers.enter(a, 3)));
        assert!(
            !peers.enter(a, 3),
            "a fourth connection of one peer is refused"
        );
        assert!(peers.enter(b, 3), "another peer is not held up");
        peers.leave(a);
        assert!(peers.enter(a, 3));
        for _ in 0..3 {
            peers.leave(a);
        }
        peers.leave(b);
        assert!(
            peers.0.lock().unwrap().is_empty(),
            "closed peers leave the table"
        );
    }

    #[test]
    fn the_peer_table_is_bounded() {
        let peers = Peers::default();
        for i in 0..MAX_PEERS as u32 {
            assert!(peers.enter(IpAddr::from(i.to_be_bytes()), 8));
        }
        assert!(!peers.enter("192.0.2.1".parse().unwrap(), 8));
        // A known peer still gets its share.
        assert!(peers.enter(IpAddr::from(0u32.to_be_bytes()), 8));
    }

    #[test]
    fn a_slot_is_taken_once_per_connection_and_refused_when_all_are_taken() {
        let slots = Arc::new(Semaphore::new(1));
        let refused = IntCounter::new("r", "r").unwrap();
        let slot = |permit| Slot {
            permit: Arc::new(Mutex::new(permit)),
            slots: slots.clone(),
            refused: Some(refused.clone()),
        };
        let first = slot(None);
        assert!(
            first.take() && first.take(),
            "a second request reuses the slot"
        );
        let second = slot(None);
        assert!(!second.take());
        assert_eq!(refused.get(), 1);
        drop(first);
        assert!(second.take(), "a closed connection gives its slot back");
    }
}
