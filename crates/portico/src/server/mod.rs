//! Listeners: binding, the accept loop, the connection limit, TLS termination, and
//! connection tracking for a graceful drain.

pub(crate) mod conn;
mod lean;
pub mod tls;

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
use crate::compile::ListenerSettings;
use crate::pipeline::ConnInfo;
use crate::server::tls::ListenerTls;

type Builder = hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>;

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
    shared: Arc<Shared>,
    /// Expiry series of this listener's certificates.
    published: Arc<tls::Published>,
    /// Polls the certificate files of a TLS listener.
    watcher: JoinHandle<()>,
}

/// The compiled TLS settings of listener `name` in the current snapshot.
fn current_tls(shared: &Shared, name: &str) -> Option<Arc<ListenerTls>> {
    shared.snapshot.load().listener_tls.get(name).cloned()
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
        let tls = current_tls(&shared, &config.name);
        let published = Arc::new(tls::Published::default());
        let first = ListenerSettings::new(&config).with_tls(tls.clone());
        if let Some(t) = &tls {
            shared.metrics.tls_listener_init(&first.name);
            published.publish(&shared.metrics, &first.name, Some(&t.resolver.current()));
        }
        let settings = Arc::new(ArcSwap::from_pointee(first));
        let max_connections = settings.load().max_connections;
        let limit = Arc::new(Semaphore::new(max_connections));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(
            listener,
            settings.clone(),
            limit.clone(),
            shared.clone(),
            stop_rx,
            conn_shutdown,
        ));
        let watcher = {
            let (s, sh) = (settings.clone(), shared.clone());
            tokio::spawn(tls::watch(
                config.name.as_str().into(),
                move || s.load().tls.clone(),
                move || sh.snapshot.load().config.runtime.watch_interval.get(),
                shared.metrics.clone(),
                published.clone(),
            ))
        };
        Ok(Self { config, local_addr, settings, limit, max_connections, stop, task, shared, published, watcher })
    }

    /// Applies new settings: they take effect for connections accepted from now on, and
    /// the connection limit is raised or lowered at once.
    pub(crate) fn update(&mut self, config: portico_config::Listener) {
        let tls = current_tls(&self.shared, &config.name);
        let settings = ListenerSettings::new(&config).with_tls(tls.clone());
        let before = self.settings.load().tls.clone();
        let same_tls = match (&before, &tls) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same_tls {
            if tls.is_some() {
                self.shared.metrics.tls_listener_init(&settings.name);
            }
            let set = tls.as_ref().map(|t| t.resolver.current());
            self.published.publish(&self.shared.metrics, &settings.name, set.as_deref());
        }
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
        self.watcher.abort();
        self.published.publish(&self.shared.metrics, &self.settings.load().name, None);
    }
}

/// The HTTP protocol settings of a listener's connections: both protocols (plain
/// listeners, h2c by prior knowledge) or the one ALPN chose (TLS listeners).
struct Builders {
    auto: Arc<Builder>,
    http1: Arc<Builder>,
    http2: Arc<Builder>,
    /// HTTP/1.1 for one request, then the connection closes: for the requests the lean
    /// loop hands to hyper (server/lean.rs), so that no later request on the connection is
    /// answered by hyper's own error paths.
    http1_once: Arc<Builder>,
}

impl Builders {
    fn new(info: &ConnInfo) -> Self {
        let b = conn::builder(info);
        let auto = if info.listener.http2 { b.clone() } else { b.clone().http1_only() };
        let mut once = b.clone();
        once.http1().keep_alive(false);
        Self {
            auto: Arc::new(auto),
            http1: Arc::new(b.clone().http1_only()),
            http2: Arc::new(b.http2_only()),
            http1_once: Arc::new(once.http1_only()),
        }
    }
}

/// Runs the TLS handshake, bounded by the listener's `header_timeout`, then serves the
/// connection with the protocol ALPN chose. Failed handshakes are counted and logged at
/// debug: they are the client's business and cheap to cause.
async fn serve_tls(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    settings: Arc<ListenerSettings>,
    tls: Arc<ListenerTls>,
    (http1, http2, http1_once): (Arc<Builder>, Arc<Builder>, Arc<Builder>),
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
    let handshake = tokio::time::timeout(settings.header_timeout, acceptor.accept(stream));
    let stream = tokio::select! {
        r = handshake => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                shared.metrics.tls_handshake_error(&settings.name, "error");
                tracing::debug!(listener = %settings.name, peer = %peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                shared.metrics.tls_handshake_error(&settings.name, "timeout");
                tracing::debug!(listener = %settings.name, peer = %peer, "TLS handshake timeout");
                return;
            }
        },
        _ = shutdown.changed() => return,
    };
    let info = tls.conn_info(stream.get_ref().1);
    let h2 = info.alpn_h2;
    let info = Arc::new(ConnInfo::with_tls(peer, settings, info));
    if h2 {
        conn::serve(stream, info, http2, shared, shutdown, conn::Start::now()).await;
    } else {
        lean::serve(stream, info, (http1, http1_once), shared, shutdown).await;
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
    let mut current: Option<(Arc<ListenerSettings>, Builders)> = None;
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
        let builders = match &current {
            Some((cs, b)) if Arc::ptr_eq(cs, &s) => b,
            _ => &current.insert((s.clone(), Builders::new(&ConnInfo::new(peer, "http", s.clone())))).1,
        };
        shared.metrics.connection_accepted(&s.name);
        let shared = shared.clone();
        let guard = shared.tracker.enter();
        let shutdown = conn_shutdown.clone();
        match s.tls.clone() {
            None => {
                let builder = (builders.auto.clone(), builders.http1_once.clone());
                let info = Arc::new(ConnInfo::new(peer, "http", s));
                tokio::spawn(async move {
                    shared.metrics.active_connections.inc();
                    lean::serve(stream, info, builder, shared.clone(), shutdown).await;
                    shared.metrics.active_connections.dec();
                    drop(guard);
                    drop(permit);
                });
            }
            Some(tls) => {
                let builders = (builders.http1.clone(), builders.http2.clone(), builders.http1_once.clone());
                tokio::spawn(async move {
                    shared.metrics.active_connections.inc();
                    serve_tls(stream, peer, s, tls, builders, shared.clone(), shutdown).await;
                    shared.metrics.active_connections.dec();
                    drop(guard);
                    drop(permit);
                });
            }
        }
    }
}
