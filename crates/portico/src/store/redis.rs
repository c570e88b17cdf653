//! The handle to the shared Redis (one server, or a Redis Cluster): one multiplexed
//! connection for commands (one per node in a cluster) and, per subscribed channel, one
//! subscriber connection, all reconnecting by themselves.
//!
//! - Commands to one server go through a [`ConnectionManager`]: cloning it is cheap, every
//!   request shares the one TCP connection (pipelined), and a broken connection is replaced
//!   in the background. It is created lazily, so the gateway starts while Redis is down;
//!   every command is bounded by a timeout, so a missing Redis costs a request at most that
//!   long.
//! - Commands to a cluster go through the redis crate's async [`ClusterConnection`], made
//!   lazily too from the configured nodes: it learns the slot map (`CLUSTER SLOTS`), sends
//!   each command to the node that owns its key's slot, follows `MOVED`/`ASK`, and
//!   reconnects to nodes that fail. Every key one decision needs carries the same hash tag
//!   (see `ratelimit::redis`), so a script touches one slot; a multi-key `MGET` is split
//!   per slot by the client; `SCRIPT LOAD` goes to every node (replicas too, and all
//!   must answer for a reload after `NOSCRIPT` to succeed).
//! - [`RedisStore::subscribe`] starts a task that keeps a subscription open. Each time the
//!   subscription is (re)established the [`Subscriber`] is told to resynchronize, because
//!   notices published while it was gone are lost. A silent dead connection is found by a
//!   `PING` every [`PING_EVERY`]. In a cluster the subscription is on one node (the first
//!   of the configured ones that answers, then the next): a cluster's `PUBLISH` reaches
//!   every node's subscribers.
//!
//! `rediss://` URLs use rustls with the aws-lc-rs provider, and the system's root
//! certificates or `redis.tls.ca`; `redis.tls.client_cert` is presented when Redis asks.
//! (The redis crate reads the system's roots even when `ca` replaces them: an unreadable
//! system store fails the connection either way.)

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use portico_config::ConfigError;
use prometheus_client::metrics::gauge::Gauge;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;

/// How often a subscriber connection is checked with `PING`.
pub const PING_EVERY: Duration = Duration::from_secs(5);

/// Longest wait between two attempts to re-subscribe.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Why a Redis command failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No answer within the time allowed.
    #[error("no answer from redis within {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error, or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Receives the messages of a subscribed channel.
pub trait Subscriber: Send + Sync + 'static {
    /// A message, in the order published. Called on the listener task: keep it short.
    fn message(&self, payload: &[u8]);
    /// The subscription was (re)established: messages published while there was none are
    /// lost, so anything derived from them must be dropped.
    fn resync(&self);
}

/// A connection to send commands on: cheap to clone, shared by every request.
#[derive(Clone)]
enum Conn {
    One(ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::One(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::One(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::One(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// What a fresh [`Conn`] is made from.
enum Target {
    One(redis::Client, ConnectionManagerConfig),
    Cluster(ClusterClient, ClusterConfig),
}

impl Target {
    /// A connection that connects on its first command.
    fn connect(&self) -> redis::RedisResult<Conn> {
        Ok(match self {
            Target::One(client, config) => {
                Conn::One(ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?)
            }
            Target::Cluster(client, config) => {
                Conn::Cluster(client.get_pending_async_connection_with_config(config.clone()))
            }
        })
    }
}

/// The shared Redis of a gateway.
pub struct RedisStore {
    target: Target,
    /// Where subscriptions go: the server, or each configured cluster node in turn.
    subscribe_to: Arc<[redis::Client]>,
    /// Replaced by a fresh one when commands keep failing (see [`RedisStore::outcome`]).
    conn: arc_swap::ArcSwap<Conn>,
    /// Commands failed in a row.
    failures: std::sync::atomic::AtomicU32,
    /// When the connection was last replaced.
    replaced: parking_lot::Mutex<std::time::Instant>,
    prefix: Arc<str>,
    timeout: Duration,
    connect_timeout: Duration,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the URL: it may carry a password.
        f.debug_struct("RedisStore").field("prefix", &self.prefix).field("timeout", &self.timeout).finish()
    }
}

impl RedisStore {
    /// A handle for `config`. Connects lazily (needs a Tokio runtime); never fails because
    /// Redis is down, only on a URL the client cannot use.
    pub fn new(config: &portico_config::Redis) -> Result<Arc<Self>, ConfigError> {
        let urls: Vec<(&str, String)> = match &config.url {
            Some(url) => vec![(url.as_str(), "redis.url".to_owned())],
            None => {
                config.cluster.iter().enumerate().map(|(i, u)| (u.as_str(), format!("redis.cluster[{i}]"))).collect()
            }
        };
        if urls.iter().any(|(u, _)| u.starts_with("rediss://")) {
            // The redis crate builds its TLS config from the process default provider.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        }
        let certs = config.tls.as_ref().map(tls_files).transpose()?;
        let mut clients = Vec::with_capacity(urls.len());
        for (url, path) in &urls {
            // The error never repeats the URL: it may carry a password.
            let client = match &certs {
                Some(c) => redis::Client::build_with_tls(*url, c.clone()),
                None => redis::Client::open(*url),
            }
            .map_err(|e| ConfigError::new(path.clone(), format!("unusable URL: {}", e)))?;
            clients.push(client);
        }
        let (connect, timeout) = (config.connect_timeout.get(), config.timeout.get());
        let target = if config.url.is_some() {
            let manager = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(connect))
                // Our own timeout bounds each command; this one only ends a wait the
                // connection would otherwise never give up on.
                .set_response_timeout(Some(connect.max(timeout)))
                // Fail the pending reconnect quickly: the next command starts another one.
                .set_number_of_retries(1)
                .set_min_delay(Duration::from_millis(50))
                .set_max_delay(Duration::from_millis(500));
            Target::One(clients[0].clone(), manager)
        } else {
            let mut builder = ClusterClient::builder(urls.iter().map(|(u, _)| *u));
            if let Some(c) = certs {
                builder = builder.certs(c);
            }
            let client = builder
                .connection_timeout(connect)
                .response_timeout(connect.max(timeout))
                // Retries follow MOVED/ASK and reconnect a failed node; our timeout bounds
                // the whole command, so a few quick ones are enough.
                .retries(3)
                .min_retry_wait(10)
                .max_retry_wait(100)
                .build()
                .map_err(|e| ConfigError::new("redis.cluster", format!("unusable nodes: {}", e)))?;
            Target::Cluster(client, ClusterConfig::new())
        };
        let conn =
            target.connect().map_err(|e| ConfigError::new("redis", format!("cannot set up the connection: {}", e)))?;
        Ok(Arc::new(Self {
            target,
            subscribe_to: clients.into(),
            conn: arc_swap::ArcSwap::from_pointee(conn),
            failures: std::sync::atomic::AtomicU32::new(0),
            replaced: parking_lot::Mutex::new(std::time::Instant::now()),
            prefix: config.key_prefix.as_str().into(),
            timeout,
            connect_timeout: connect,
        }))
    }

    /// The key prefix (`redis.key_prefix`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The default time allowed for one command (`redis.timeout`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Notes a command's outcome. The connection manager reconnects by itself after I/O
    /// errors, but one whose reconnect failed in a way it does not count as I/O (a connect
    /// timeout, say) would hand out the same failed connection forever. So after a few
    /// failures in a row, at most once a second, it is replaced by a fresh one, which
    /// connects on the next command: a safety net that costs nothing while Redis answers.
    /// Not in a cluster: there the client reconnects each node by itself, and failures
    /// of one node's slots say nothing of the others, which a fresh client (one that must
    /// first learn the slot map again) would take down too.
    fn outcome<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        use std::sync::atomic::Ordering;
        match &r {
            Ok(_) => self.failures.store(0, Ordering::Relaxed),
            Err(StoreError::Redis(e)) if !(e.is_io_error() || e.is_connection_dropped() || e.is_timeout()) => {
                // Redis answered (a script error, a wrong type): the connection is fine.
            }
            Err(_) if matches!(self.target, Target::Cluster(..)) => {}
            Err(_) => {
                if self.failures.fetch_add(1, Ordering::Relaxed) + 1 >= 3 {
                    let mut replaced = self.replaced.lock();
                    if replaced.elapsed() >= Duration::from_secs(1)
                        && let Ok(fresh) = self.target.connect()
                    {
                        *replaced = std::time::Instant::now();
                        self.failures.store(0, Ordering::Relaxed);
                        self.conn.store(Arc::new(fresh));
                        tracing::debug!("redis connection replaced after repeated failures");
                    }
                }
            }
        }
        r
    }

    /// Runs `cmd` within `timeout`.
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd, timeout: Duration) -> Result<T, StoreError> {
        let mut conn = (**self.conn.load()).clone();
        let r = match tokio::time::timeout(timeout, cmd.query_async(&mut conn)).await {
            Ok(r) => r.map_err(StoreError::from),
            Err(_) => Err(StoreError::Timeout(timeout)),
        };
        self.outcome(r)
    }

    /// Runs the commands of `pipe` in order within `timeout`: in one round trip on one
    /// server; in a cluster one after the other, because a pipeline there must stay in one
    /// slot, and `PUBLISH` is routed by its channel as if it were a key.
    pub async fn exec(&self, pipe: &redis::Pipeline, timeout: Duration) -> Result<(), StoreError> {
        let mut conn = (**self.conn.load()).clone();
        let run = async {
            if let Conn::Cluster(_) = conn {
                for cmd in pipe.cmd_iter() {
                    cmd.exec_async(&mut conn).await?;
                }
                Ok(())
            } else {
                pipe.exec_async(&mut conn).await
            }
        };
        let r = match tokio::time::timeout(timeout, run).await {
            Ok(r) => r.map_err(StoreError::from),
            Err(_) => Err(StoreError::Timeout(timeout)),
        };
        self.outcome(r)
    }

    /// Runs a Lua script (`EVALSHA`; on `NOSCRIPT`, `SCRIPT LOAD` and `EVALSHA` again) within
    /// `timeout`, the reload included.
    pub async fn invoke<T: redis::FromRedisValue>(
        &self,
        script: &redis::ScriptInvocation<'_>,
        timeout: Duration,
    ) -> Result<T, StoreError> {
        let mut conn = (**self.conn.load()).clone();
        let r = match tokio::time::timeout(timeout, script.invoke_async(&mut conn)).await {
            Ok(r) => r.map_err(StoreError::from),
            Err(_) => Err(StoreError::Timeout(timeout)),
        };
        self.outcome(r)
    }

    /// Opens the connection now rather than on the first command, and says in the log
    /// whether Redis answers.
    pub fn warm_up(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            match me.query::<String>(&redis::cmd("PING"), me.connect_timeout + me.timeout).await {
                Ok(_) => tracing::info!(prefix = %me.prefix, "redis answers"),
                Err(e) => {
                    tracing::warn!(error = %e, "redis does not answer yet; features that need it fail as configured")
                }
            }
        });
    }

    /// Keeps `channel` subscribed for `sub` until `sub` is dropped. `up` is 1 while
    /// subscribed.
    pub fn subscribe(self: &Arc<Self>, channel: String, sub: &Arc<dyn Subscriber>, up: Gauge) {
        let nodes = self.subscribe_to.clone();
        let connect_timeout = self.connect_timeout;
        let weak = Arc::downgrade(sub);
        tokio::spawn(listen(nodes, channel, weak, up, connect_timeout));
    }
}

/// Reads `redis.tls`'s files (once, at start).
fn tls_files(tls: &portico_config::RedisTls) -> Result<redis::TlsCertificates, ConfigError> {
    let read = |field: &str, path: &Option<String>| -> Result<Option<Vec<u8>>, ConfigError> {
        path.as_ref()
            .map(|p| {
                std::fs::read(p)
                    .map_err(|e| ConfigError::new(format!("redis.tls.{field}"), format!("cannot read {p}: {e}")))
            })
            .transpose()
    };
    // Checked here, so that a wrong file is a start-up error naming its field, not an
    // empty trust store or a failed handshake at the first command.
    let certificates = |field: &str, pem: &[u8]| -> Result<(), ConfigError> {
        use rustls_pki_types::pem::PemObject;
        let certs: Result<Vec<_>, _> = rustls_pki_types::CertificateDer::pem_slice_iter(pem).collect();
        match certs {
            Ok(c) if !c.is_empty() => Ok(()),
            Ok(_) => Err(ConfigError::new(format!("redis.tls.{field}"), "holds no PEM certificate")),
            Err(e) => Err(ConfigError::new(format!("redis.tls.{field}"), format!("unreadable PEM: {e}"))),
        }
    };
    let root_cert = read("ca", &tls.ca)?;
    if let Some(pem) = &root_cert {
        certificates("ca", pem)?;
    }
    let client_tls = match (read("client_cert", &tls.client_cert)?, read("client_key", &tls.client_key)?) {
        (Some(client_cert), Some(client_key)) => {
            use rustls_pki_types::pem::PemObject;
            certificates("client_cert", &client_cert)?;
            rustls_pki_types::PrivateKeyDer::from_pem_slice(&client_key)
                .map_err(|e| ConfigError::new("redis.tls.client_key", format!("no usable PEM private key: {e}")))?;
            Some(redis::ClientTlsConfig { client_cert, client_key })
        }
        _ => None,
    };
    Ok(redis::TlsCertificates { client_tls, root_cert })
}

async fn listen(
    nodes: Arc<[redis::Client]>,
    channel: String,
    sub: Weak<dyn Subscriber>,
    up: Gauge,
    connect_timeout: Duration,
) {
    let mut backoff = Duration::from_millis(100);
    // Log a failure once per outage, not once per attempt.
    let mut healthy = true;
    // The node tried next (a cluster's nodes in turn; after a failure, the next one).
    let mut node = 0;
    loop {
        if sub.strong_count() == 0 {
            return;
        }
        let client = &nodes[node % nodes.len()];
        node += 1;
        let opened = tokio::time::timeout(connect_timeout, async {
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(ps)
        })
        .await;
        let ps = match opened {
            Ok(Ok(ps)) => ps,
            Ok(Err(e)) => {
                if std::mem::take(&mut healthy) {
                    tracing::warn!(%channel, error = %e, "redis subscription failed; retrying");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(_) => {
                if std::mem::take(&mut healthy) {
                    tracing::warn!(%channel, timeout = ?connect_timeout, "redis subscription timed out; retrying");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let Some(s) = sub.upgrade() else { return };
        s.resync();
        drop(s);
        up.set(1);
        if !healthy {
            tracing::info!(%channel, "redis subscription restored");
        }
        backoff = Duration::from_millis(100);
        // While this node serves, it is the one tried first again.
        node -= 1;
        let (mut sink, mut stream) = ps.split();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        let why = loop {
            tokio::select! {
                m = stream.next() => match m {
                    Some(msg) => {
                        let Some(s) = sub.upgrade() else { return };
                        s.message(msg.get_payload_bytes());
                    }
                    None => break "connection closed",
                },
                _ = ping.tick() => {
                    match tokio::time::timeout(connect_timeout, sink.ping::<String>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(_)) => break "ping failed",
                        Err(_) => break "ping timed out",
                    }
                }
            }
        };
        up.set(0);
        healthy = false;
        tracing::warn!(%channel, reason = why, "redis subscription lost; reconnecting");
    }
}
