//! Portico, an API gateway: the library behind the `portico` binary.
//!
//! A [`Gateway`] is started from a validated [`portico_config::Config`]. It binds every
//! listener, serves requests through the pipeline (route match, then the proxy handler),
//! exports metrics and writes the access log. Config reloads swap a compiled
//! [`compile::Snapshot`] atomically and never touch open connections; unchanged
//! listeners keep their sockets, added ones start, removed ones stop accepting.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let yaml = std::fs::read_to_string("portico.yaml")?;
//! let parsed = portico_config::parse(&yaml, |k| std::env::var(k).ok())?;
//! let signals = portico::Signals::install()?; // before start: a SIGTERM right after
//!                                               // "listening" must drain, not kill
//! let gateway = portico::Gateway::start(parsed.config, Some("portico.yaml".into())).await?;
//! gateway.run_until_signal(signals).await;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod body;
pub mod cache;
pub mod compile;
pub mod contract;
pub mod demo;
pub mod error;
pub mod forwarded;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod handlers;
pub mod identity;
pub mod lifecycle;
pub mod observe;
pub mod pipeline;
pub mod plugins;
pub mod proto;
pub mod ratelimit;
pub mod router;
pub mod server;
pub mod store;
pub mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use portico_config::{Config, ConfigError, ConfigErrors};
use tokio::sync::watch;

use crate::compile::Snapshot;
use crate::observe::{AccessLog, AuditLog, Metrics};
use crate::server::{RunningListener, Tracker};

/// The process signals the gateway answers: SIGTERM and SIGINT drain and exit, SIGHUP
/// reloads.
///
/// Installed before [`Gateway::start`] binds anything, so that a signal sent as soon as
/// the listeners are up is caught (the default action would kill the process mid-start).
#[derive(Debug)]
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers. Needs a running Tokio runtime.
    pub fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// State shared by every connection and request.
#[derive(Debug)]
pub struct Shared {
    /// The current compiled config.
    pub snapshot: ArcSwap<Snapshot>,
    /// Metrics, for the life of the process.
    pub metrics: Arc<Metrics>,
    /// The access log.
    pub access_log: AccessLog,
    /// The audit log of refused authentications and authorizations.
    pub audit_log: AuditLog,
    /// Set once shutdown begins: `/ready` answers 503.
    pub draining: AtomicBool,
    /// Open connections and tunnels.
    pub tracker: Arc<Tracker>,
    /// Process-wide handles (the shared Redis and what uses it), fixed at start.
    pub services: compile::Services,
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config does not compile.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({name})")]
    Bind {
        /// Listener name.
        name: String,
        /// Address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The access log could not be opened.
    #[error("cannot open access log {path}")]
    AccessLog {
        /// Path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Starts the JWKS refresh of JWT providers and waits for each first fetch (bounded by
/// its timeout), so that the first tokens meet keys rather than a 503.
async fn start_jwks_tasks<'a>(providers: impl Iterator<Item = &'a Arc<plugins::jwt::JwtProvider>>) {
    let mut waits = Vec::new();
    for p in providers {
        if let Some(rx) = plugins::jwt::spawn(p) {
            let timeout = p.definition.jwks.as_ref().map_or(Duration::from_secs(5), |j| j.timeout.get());
            waits.push((rx, timeout + Duration::from_millis(200)));
        }
    }
    for (mut rx, timeout) in waits {
        let _ = tokio::time::timeout(timeout, rx.wait_for(|n| *n > 0)).await;
    }
}

/// Connects the shared Redis (lazily: a Redis that is down does not stop the start) and
/// starts what uses it.
fn start_services(config: &Config, metrics: &Arc<Metrics>) -> Result<compile::Services, ConfigErrors> {
    let Some(r) = &config.redis else { return Ok(compile::Services::default()) };
    let store = store::redis::RedisStore::new(r).map_err(|e| ConfigErrors(vec![e]))?;
    store.warm_up();
    Ok(compile::Services {
        revocations: Some(identity::revocation::Revocations::start(store.clone(), metrics)),
        tenants: Some(identity::tenants::TenantStore::start(store.clone(), metrics)),
        cache_purges: Some(cache::purge::Purges::start(store.clone(), metrics)),
        redis: Some(store),
    })
}

/// Every 10 s, drops idle keys from the rate limiters of the config in force, so that keys
/// seen once do not hold memory (each limiter is also bounded on its own).
fn spawn_limit_sweeper(shared: std::sync::Weak<Shared>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(shared) = shared.upgrade() else { return };
            let snap = shared.snapshot.load_full();
            drop(shared);
            // Routes share a global plugin's limiters: sweep each once.
            let mut seen: Vec<usize> = Vec::new();
            for r in &snap.routes {
                if let Some(rl) = r.plugins.rate_limit() {
                    let at = Arc::as_ptr(rl) as usize;
                    if !seen.contains(&at) {
                        seen.push(at);
                        rl.sweep();
                    }
                }
            }
        }
    });
}

/// Starts the health-check and discovery tasks of upstreams, and waits (at most 3 s) for
/// discovery's first answer so that traffic does not meet an empty upstream.
async fn start_upstream_tasks<'a>(ups: impl Iterator<Item = &'a Arc<upstream::Upstream>>) {
    let mut waits = Vec::new();
    for up in ups {
        upstream::health::spawn(up);
        upstream::discovery::spawn(up);
        waits.push(up.resolved.subscribe());
    }
    for mut w in waits {
        let _ = tokio::time::timeout(Duration::from_secs(3), w.wait_for(|resolved| *resolved)).await;
    }
}

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    shared: Arc<Shared>,
    config_path: Option<PathBuf>,
    listeners: Mutex<HashMap<String, RunningListener>>,
    conn_shutdown: watch::Sender<bool>,
    admin_stop: watch::Sender<bool>,
    admin_addr: Option<SocketAddr>,
    reload_lock: tokio::sync::Mutex<()>,
    /// The config file's content as last read (by start, SIGHUP or the watcher), so the
    /// watcher does not reload what a SIGHUP already did.
    last_source: Mutex<Option<String>>,
    /// The settings that only a restart changes, as they were at start.
    fixed: FixedSettings,
}

/// Settings read once at start; a reload that changes them is told so every time.
#[derive(Debug, Clone, PartialEq)]
struct FixedSettings {
    worker_threads: usize,
    access_log: portico_config::AccessLog,
    audit_log: portico_config::AuditLog,
    admin: portico_config::Admin,
    redis: Option<portico_config::Redis>,
}

impl FixedSettings {
    fn of(c: &Config) -> Self {
        Self {
            worker_threads: c.runtime.worker_threads,
            access_log: c.access_log.clone(),
            audit_log: c.audit_log.clone(),
            admin: c.admin.clone(),
            redis: c.redis.clone(),
        }
    }
}

impl Gateway {
    /// Compiles `config`, binds every listener and the admin listener, and starts serving.
    pub async fn start(config: Config, config_path: Option<PathBuf>) -> Result<Arc<Gateway>, StartError> {
        let metrics = Arc::new(Metrics::new());
        let access_log = if config.access_log.enabled {
            AccessLog::start(
                &config.access_log.output,
                config.access_log.queue_size,
                metrics.access_log_dropped.clone(),
            )
            .map_err(|source| StartError::AccessLog { path: config.access_log.output.clone(), source })?
        } else {
            AccessLog::disabled()
        };
        let audit_log = if config.audit_log.enabled {
            AuditLog::new(&config.audit_log.output, config.audit_log.queue_size, metrics.audit_log_dropped.clone())
                .map_err(|source| StartError::AccessLog { path: config.audit_log.output.clone(), source })?
        } else {
            AuditLog::disabled()
        };
        // Bind everything before serving anything, so a bad address fails the start cleanly.
        let mut bound = Vec::new();
        for l in &config.listeners {
            let sock = server::bind(l.bind).map_err(|source| StartError::Bind {
                name: l.name.clone(),
                addr: l.bind,
                source,
            })?;
            bound.push((l.clone(), sock));
        }
        let admin_sock = if config.admin.enabled {
            Some(server::bind(config.admin.bind).map_err(|source| StartError::Bind {
                name: "admin".into(),
                addr: config.admin.bind,
                source,
            })?)
        } else {
            None
        };
        let fixed = FixedSettings::of(&config);
        let services = start_services(&config, &metrics)?;
        let snapshot = Snapshot::compile_with(config, None, &metrics, Some(&services))?;
        start_upstream_tasks(snapshot.upstreams.values()).await;
        start_jwks_tasks(snapshot.jwt_providers.values()).await;
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            access_log,
            audit_log,
            draining: AtomicBool::new(false),
            tracker: Arc::new(Tracker::default()),
            services,
        });
        spawn_limit_sweeper(Arc::downgrade(&shared));
        if let Some(p) = &shared.services.cache_purges {
            p.attach(Arc::downgrade(&shared));
        }
        let (conn_shutdown, conn_shutdown_rx) = watch::channel(false);
        let mut listeners = HashMap::new();
        for (l, sock) in bound {
            let name = l.name.clone();
            let addr = l.bind;
            let running = RunningListener::start(sock, l, shared.clone(), conn_shutdown_rx.clone())
                .map_err(|source| StartError::Bind { name: name.clone(), addr, source })?;
            tracing::info!(listener = %name, addr = %running.local_addr, "listening");
            listeners.insert(name, running);
        }
        let (admin_stop, admin_stop_rx) = watch::channel(false);
        let mut admin_addr = None;
        if let Some(sock) = admin_sock {
            let addr = sock.local_addr().ok();
            let listener = tokio::net::TcpListener::from_std(sock).map_err(|source| StartError::Bind {
                name: "admin".into(),
                addr: addr.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
                source,
            })?;
            if let Some(a) = addr {
                tracing::info!(listener = "admin", addr = %a, "listening");
            }
            admin_addr = addr;
            tokio::spawn(admin::serve(listener, shared.clone(), admin_stop_rx));
        }
        Ok(Arc::new(Gateway {
            shared,
            config_path,
            listeners: Mutex::new(listeners),
            conn_shutdown,
            admin_stop,
            admin_addr,
            reload_lock: tokio::sync::Mutex::new(()),
            last_source: Mutex::new(None),
            fixed,
        }))
    }

    /// Records the config file's content this gateway was started from, so the file
    /// watcher compares later edits with what was really loaded.
    pub fn loaded_from(&self, source: String) {
        *self.last_source.lock().unwrap_or_else(|e| e.into_inner()) = Some(source);
    }

    /// State shared with requests (metrics, current snapshot).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The bound address of each listener, by name (useful with port 0).
    pub fn listener_addrs(&self) -> HashMap<String, SocketAddr> {
        let map = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.local_addr)).collect()
    }

    /// The admin listener's bound address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Re-reads the config file and applies it. On any error the running config stays.
    pub async fn reload_from_file(&self) -> Result<(), ConfigErrors> {
        let Some(path) = &self.config_path else {
            return Err(ConfigErrors(vec![ConfigError::new("", "no config file to reload from")]));
        };
        let result = match portico_config::read_file(path) {
            Ok(src) => {
                let parsed = portico_config::parse(&src, |k| std::env::var(k).ok());
                *self.last_source.lock().unwrap_or_else(|e| e.into_inner()) = Some(src);
                match parsed {
                    Ok(parsed) => self.apply(parsed.config).await,
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        self.shared.metrics.reload(result.is_ok());
        match &result {
            Ok(()) => tracing::info!(path = %path.display(), "config reloaded"),
            Err(e) => {
                tracing::error!(path = %path.display(), errors = %e, "config reload rejected; the previous config stays in force")
            }
        }
        result
    }

    /// Applies a validated config: compiles it, then swaps it in atomically. Listeners
    /// that are unchanged keep running (their limits apply to new connections); added
    /// ones start; removed ones stop accepting while their open connections finish.
    pub async fn apply(&self, config: Config) -> Result<(), ConfigErrors> {
        let _serial = self.reload_lock.lock().await;
        let current = self.shared.snapshot.load_full();
        let fixed = FixedSettings::of(&config);
        if fixed.worker_threads != self.fixed.worker_threads {
            tracing::warn!("runtime.worker_threads changes only on restart; keeping the running value");
        }
        if fixed.access_log != self.fixed.access_log {
            tracing::warn!("access_log changes only on restart; keeping the running settings");
        }
        if fixed.audit_log != self.fixed.audit_log {
            tracing::warn!("audit_log changes only on restart; keeping the running settings");
        }
        if fixed.admin != self.fixed.admin {
            tracing::warn!("admin changes only on restart; keeping the running admin listener");
        }
        if fixed.redis != self.fixed.redis {
            tracing::warn!("redis changes only on restart; keeping the running connection");
        }
        // Bind new listeners first: if one fails, nothing changes.
        let mut to_start = Vec::new();
        let mut to_stop = Vec::new();
        {
            let running = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
            for l in &config.listeners {
                match running.get(&l.name) {
                    Some(r) if r.config.bind == l.bind => {}
                    Some(_) => {
                        to_stop.push(l.name.clone());
                        to_start.push(l.clone());
                    }
                    None => to_start.push(l.clone()),
                }
            }
            for name in running.keys() {
                if !config.listeners.iter().any(|l| &l.name == name) {
                    to_stop.push(name.clone());
                }
            }
        }
        let mut bound = Vec::new();
        for l in to_start {
            // A listener moving to another address: the old socket may be the same port.
            let sock = server::bind(l.bind).map_err(|e| {
                let i = config.listeners.iter().position(|x| x.name == l.name).unwrap_or(0);
                ConfigErrors(vec![ConfigError::new(
                    format!("listeners[{i}].bind"),
                    format!("cannot listen on {}: {e}", l.bind),
                )])
            })?;
            bound.push((l, sock));
        }
        let snapshot =
            Snapshot::compile_with(config, Some(&current), &self.shared.metrics, Some(&self.shared.services))?;
        // Upstreams kept from the running config keep their health-check and discovery
        // tasks; new ones start theirs, and get their first DNS answer before traffic.
        let fresh: Vec<&Arc<upstream::Upstream>> = snapshot
            .upstreams
            .iter()
            .filter(|(name, up)| !current.upstreams.get(*name).is_some_and(|old| Arc::ptr_eq(old, up)))
            .map(|(_, up)| up)
            .collect();
        start_upstream_tasks(fresh.into_iter()).await;
        let fresh_jwt = snapshot
            .jwt_providers
            .iter()
            .filter(|(name, p)| !current.jwt_providers.get(*name).is_some_and(|old| Arc::ptr_eq(old, p)))
            .map(|(_, p)| p);
        start_jwks_tasks(fresh_jwt).await;
        let listeners_cfg = snapshot.config.listeners.clone();
        self.shared.snapshot.store(Arc::new(snapshot));

        let mut running = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        for name in to_stop {
            if let Some(r) = running.remove(&name) {
                tracing::info!(listener = %name, "listener removed; open connections continue");
                r.stop();
            }
        }
        for (l, sock) in bound {
            let name = l.name.clone();
            match RunningListener::start(sock, l, self.shared.clone(), self.conn_shutdown.subscribe()) {
                Ok(r) => {
                    tracing::info!(listener = %name, addr = %r.local_addr, "listening");
                    running.insert(name, r);
                }
                Err(e) => tracing::error!(listener = %name, error = %e, "cannot start listener"),
            }
        }
        for l in &listeners_cfg {
            if let Some(r) = running.get_mut(&l.name) {
                r.update(l.clone());
            }
        }
        Ok(())
    }

    /// Drains: `/ready` turns 503; after `delay`, listeners stop accepting and open
    /// connections are asked to finish (in-flight requests complete); this returns when
    /// all are closed or `timeout` has passed. Returns the number of connections still open.
    pub async fn shutdown(&self, delay: Duration, timeout: Duration) -> usize {
        self.shared.draining.store(true, Ordering::SeqCst);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        {
            let running = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
            for r in running.values() {
                r.stop();
            }
        }
        let _ = self.conn_shutdown.send(true);
        let tracker = self.shared.tracker.clone();
        let _ = tokio::time::timeout(timeout, tracker.wait_idle()).await;
        let left = tracker.active();
        let _ = self.admin_stop.send(true);
        left
    }

    /// Serves until SIGTERM or SIGINT, then drains for `runtime.drain_timeout`.
    /// SIGHUP and changes of the config file reload the config.
    pub async fn run_until_signal(self: Arc<Self>, signals: Signals) {
        let Signals { mut term, mut int, mut hup } = signals;
        let watcher = self.config_path.clone().map(|path| {
            let gw = self.clone();
            tokio::spawn(async move { gw.watch_file(path).await })
        });
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading config");
                    let _ = self.reload_from_file().await;
                }
            }
        }
        if let Some(w) = watcher {
            w.abort();
        }
        let runtime = self.shared.snapshot.load().config.runtime.clone();
        let (delay, timeout) = (runtime.shutdown_delay.get(), runtime.drain_timeout.get());
        tracing::info!(delay = ?delay, timeout = ?timeout, open = self.shared.tracker.active(), "draining");
        let left = self.shutdown(delay, timeout).await;
        if left > 0 {
            tracing::warn!(open = left, "drain timeout passed; closing remaining connections");
        } else {
            tracing::info!("drained; exiting");
        }
        let log = self.shared.access_log.clone();
        let audit = self.shared.audit_log.clone();
        let _ = tokio::task::spawn_blocking(move || {
            log.flush(Duration::from_secs(2));
            audit.flush(Duration::from_secs(1));
        })
        .await;
    }

    /// Polls the config file and reloads when its content changes.
    ///
    /// Polling rather than inotify: it sees Kubernetes ConfigMap symlink swaps, editors
    /// that save by rename, and network filesystems alike, at the cost of one `stat` per
    /// interval. A change is read only once the file has stayed the same for a whole
    /// interval, and a file that does not parse (a save in progress) is simply not
    /// applied; the next change is tried again.
    async fn watch_file(self: Arc<Self>, path: PathBuf) {
        let stat = |m: std::fs::Metadata| (m.modified().ok(), m.len(), std::os::unix::fs::MetadataExt::ino(&m));
        let mut last_stat = tokio::fs::metadata(&path).await.ok().map(stat);
        {
            let mut last = self.last_source.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_none() {
                *last = std::fs::read_to_string(&path).ok();
            }
        }
        loop {
            let interval = self.shared.snapshot.load().config.runtime.watch_interval.get();
            if interval.is_zero() {
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
            tokio::time::sleep(interval).await;
            // Cheap check first; read only when something about the file changed.
            let now_stat = tokio::fs::metadata(&path).await.ok().map(stat);
            if now_stat.is_none() || now_stat == last_stat {
                continue;
            }
            // Changed: let the writer finish. Only a file that stayed the same for a whole
            // interval is read, so a slow save is not caught halfway.
            tokio::time::sleep(interval).await;
            if tokio::fs::metadata(&path).await.ok().map(stat) != now_stat {
                continue;
            }
            last_stat = now_stat;
            let Ok(now) = tokio::fs::read_to_string(&path).await else { continue };
            if self.last_source.lock().unwrap_or_else(|e| e.into_inner()).as_deref() == Some(now.as_str()) {
                continue;
            }
            tracing::info!(path = %path.display(), "config file changed; reloading");
            let _ = self.reload_from_file().await;
        }
    }
}
