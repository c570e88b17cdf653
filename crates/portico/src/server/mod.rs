//! Listeners: binding, the accept loop, the connection limit, and connection tracking for
//! a graceful drain.

pub(crate) mod conn;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;

use crate::Shared;
use crate::pipeline::ConnInfo;
use crate::snapshot::ListenerSettings;

/// Counts open connections and tunnels, so shutdown can wait for them.
#[derive(Debug, Default)]
pub struct Tracker {
    active: AtomicUsize,
    idle: Notify,
}

/// Held while a connection or tunnel is open.
#[derive(Debug)]
pub struct TrackerGuard {
    tracker: Arc<Tracker>,
}

impl Tracker {
    /// Registers one open connection or tunnel until the guard drops.
    pub fn enter(self: &Arc<Self>) -> TrackerGuard {
        self.active.fetch_add(1, Ordering::SeqCst);
        TrackerGuard { tracker: self.clone() }
    }

    /// Open connections and tunnels.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Waits until nothing is open.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for TrackerGuard {
    fn drop(&mut self) {
        if self.tracker.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.tracker.idle.notify_waiters();
        }
    }
}

/// Binds a listening socket with `SO_REUSEADDR` and a deep accept queue.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let domain = if addr.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// A running listener.
#[derive(Debug)]
pub(crate) struct RunningListener {
    pub(crate) config: portico_config::Listener,
    pub(crate) local_addr: SocketAddr,
    pub(crate) settings: Arc<ArcSwap<ListenerSettings>>,
    limit: Arc<Semaphore>,
    max_connections: usize,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RunningListener {
    /// Starts accepting on an already bound socket.
    pub(crate) fn start(
        std_listener: std::net::TcpListener,
        config: portico_config::Listener,
        shared: Arc<Shared>,
        conn_shutdown: watch::Receiver<bool>,
    ) -> io::Result<Self> {
        let local_addr = std_listener.local_addr()?;
        let listener = TcpListener::from_std(std_listener)?;
        let settings = Arc::new(ArcSwap::from_pointee(ListenerSettings::new(&config)));
        let max_connections = settings.load().max_connections;
        let limit = Arc::new(Semaphore::new(max_connections));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, settings.clone(), limit.clone(), shared, stop_rx, conn_shutdown));
        Ok(Self { config, local_addr, settings, limit, max_connections, stop, task })
    }

    /// Applies new settings: they take effect for connections accepted from now on, and
    /// the connection limit is raised or lowered at once.
    pub(crate) fn update(&mut self, config: portico_config::Listener) {
        let settings = ListenerSettings::new(&config);
        let new_max = settings.max_connections;
        if new_max > self.max_connections {
            self.limit.add_permits(new_max - self.max_connections);
        } else if new_max < self.max_connections {
            let excess = self.max_connections - new_max;
            let forgotten = self.limit.forget_permits(excess);
            if forgotten < excess {
                // Connections hold the rest: take them back as those connections close.
                let limit = self.limit.clone();
                let rest = u32::try_from(excess - forgotten).unwrap_or(u32::MAX);
                tokio::spawn(async move {
                    if let Ok(p) = limit.acquire_many_owned(rest).await {
                        p.forget();
                    }
                });
            }
        }
        self.max_connections = new_max;
        self.settings.store(Arc::new(settings));
        self.config = config;
    }

    /// Stops accepting; open connections carry on.
    pub(crate) fn stop(&self) {
        let _ = self.stop.send(true);
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    settings: Arc<ArcSwap<ListenerSettings>>,
    limit: Arc<Semaphore>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    conn_shutdown: watch::Receiver<bool>,
) {
    let mut current: Option<(
        Arc<ListenerSettings>,
        Arc<hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>>,
    )> = None;
    loop {
        // At the connection limit, stop accepting: new clients wait in the kernel's queue.
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let s = settings.load_full();
        let builder = match &current {
            Some((cs, b)) if Arc::ptr_eq(cs, &s) => b.clone(),
            _ => {
                let info = ConnInfo::new(peer, "http", s.clone());
                let b = Arc::new(conn::builder(&info));
                current = Some((s.clone(), b.clone()));
                b
            }
        };
        shared.metrics.connection_accepted(&s.name);
        let info = Arc::new(ConnInfo::new(peer, "http", s));
        let shared = shared.clone();
        let guard = shared.tracker.enter();
        let shutdown = conn_shutdown.clone();
        tokio::spawn(async move {
            shared.metrics.active_connections.inc();
            conn::serve(stream, info, builder, shared.clone(), shutdown).await;
            shared.metrics.active_connections.dec();
            drop(guard);
            drop(permit);
        });
    }
}
