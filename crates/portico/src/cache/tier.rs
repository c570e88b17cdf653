//! The cache's shared tier (`store: redis`): each key's entries (its `Vary` variants) as one
//! Redis value, under `{prefix}cache:{store}:{sha256 of the key}`, expiring when the entries
//! are of no more use. Read after a miss in memory, written after each fill. Redis failing
//! or slow costs a request nothing but the tier: the cache goes on from memory, says so in
//! the log once, and leaves Redis alone for a second before it asks again.
//!
//! The value is a small binary encoding written here ([`encode`], [`decode`]): the body is
//! bytes (JSON would double it in base64), and a value another version or a broken write
//! left is refused by [`decode`], never trusted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};

use super::purge::Purges;
use super::store::{Entry, Slot};
use crate::store::redis::RedisStore;

/// The value's first bytes: the format and its version.
const MAGIC: &[u8; 4] = b"PCE1";

/// The most variants, fields, tags a value may hold (a value past these is refused).
const MAX_ITEMS: u32 = 1024;

/// The shared tier of one cache store.
#[derive(Debug)]
pub struct Tier {
    redis: Arc<RedisStore>,
    purges: Option<Arc<Purges>>,
    store: Arc<str>,
    prefix: String,
    /// Redis was failing when last asked (logged once per outage).
    down: AtomicBool,
    /// Until when (ms since the epoch) Redis is left alone after a failure.
    skip_until: AtomicU64,
    max_object: u64,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Tier {
    /// The tier of store `store` in `redis`.
    pub fn new(redis: Arc<RedisStore>, purges: Option<Arc<Purges>>, store: &str, max_object: u64) -> Self {
        let prefix = format!("{}cache:{store}:", redis.prefix());
        Self {
            redis,
            purges,
            store: store.into(),
            prefix,
            down: AtomicBool::new(false),
            skip_until: AtomicU64::new(0),
            max_object,
        }
    }

    /// The Redis key of a cache key (hashed: a key holds a caller's ID and can be long).
    pub fn redis_key(&self, key: &str) -> String {
        format!("{}{}", self.prefix, crate::identity::hex(&crate::identity::sha256(key.as_bytes())))
    }

    fn failed(&self, what: &str, e: &dyn std::fmt::Display) {
        self.skip_until.store(now_ms() + 1000, Ordering::Relaxed);
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(store = %self.store, error = %e, "cache: redis {what} failed; serving from memory only until it answers");
        }
    }

    fn answered(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            tracing::info!(store = %self.store, "cache: redis answers again");
        }
    }

    fn skipping(&self) -> bool {
        now_ms() < self.skip_until.load(Ordering::Relaxed)
    }

    /// The entries Redis holds for `key`, without those a purge removed since they were
    /// stored; `None` on a miss, a value that does not decode, or Redis failing.
    pub async fn get(&self, key: &str) -> Option<Vec<Arc<Entry>>> {
        // Until the purges kept in Redis are known, what it holds cannot be trusted.
        if self.skipping() || self.purges.as_ref().is_some_and(|p| !p.ready()) {
            return None;
        }
        let cmd = redis::cmd("GET").arg(self.redis_key(key)).clone();
        let value: Option<Vec<u8>> = match self.redis.query(&cmd, self.redis.timeout()).await {
            Ok(v) => {
                self.answered();
                v
            }
            Err(e) => {
                self.failed("read", &e);
                return None;
            }
        };
        let entries = decode(&value?).ok()?;
        let live: Vec<Arc<Entry>> = entries
            .into_iter()
            .filter(|e| !self.purges.as_ref().is_some_and(|p| p.purged(&self.store, e)))
            .map(Arc::new)
            .collect();
        (!live.is_empty()).then_some(live)
    }

    /// Writes `slot` under `key` (in the background), to expire when it is of no more use.
    pub fn put(self: &Arc<Self>, key: &str, slot: &Slot) {
        if self.skipping() || slot.variants.iter().any(|e| e.body.len() as u64 > self.max_object) {
            return;
        }
        let keep = slot.keep().as_millis().max(1) as u64;
        let cmd = redis::cmd("SET").arg(self.redis_key(key)).arg(encode(&slot.variants)).arg("PX").arg(keep).clone();
        let me = self.clone();
        tokio::spawn(async move {
            match me.redis.query::<()>(&cmd, me.redis.timeout()).await {
                Ok(()) => me.answered(),
                Err(e) => me.failed("write", &e),
            }
        });
    }

    /// Removes `key`'s entries.
    pub async fn delete(&self, key: &str) -> Result<(), crate::store::redis::StoreError> {
        let cmd = redis::cmd("DEL").arg(self.redis_key(key)).clone();
        self.redis.query::<i64>(&cmd, self.redis.timeout()).await.map(|_| ())
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

/// A key's entries as one value.
pub fn encode(entries: &[Arc<Entry>]) -> Vec<u8> {
    let size: usize = entries.iter().map(|e| e.body.len() + 512).sum();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for e in entries {
        out.extend_from_slice(&e.status.as_u16().to_be_bytes());
        let received = e.received.duration_since(UNIX_EPOCH).unwrap_or_default();
        for d in [received, e.initial_age, e.fresh_for, e.stale_while_revalidate, e.stale_if_error] {
            out.extend_from_slice(&millis(d).to_be_bytes());
        }
        out.push(u8::from(e.revalidate));
        out.extend_from_slice(&(e.headers.len() as u32).to_be_bytes());
        for (name, value) in &e.headers {
            put_bytes(&mut out, name.as_str().as_bytes());
            put_bytes(&mut out, value.as_bytes());
        }
        out.extend_from_slice(&(e.vary.len() as u32).to_be_bytes());
        for (name, value) in &*e.vary {
            put_bytes(&mut out, name.as_str().as_bytes());
            match value {
                Some(v) => {
                    out.push(1);
                    put_bytes(&mut out, v.as_bytes());
                }
                None => out.push(0),
            }
        }
        out.extend_from_slice(&(e.tags.len() as u32).to_be_bytes());
        for t in &*e.tags {
            put_bytes(&mut out, t.as_bytes());
        }
        put_bytes(&mut out, e.path.as_bytes());
        put_bytes(&mut out, &e.body);
    }
    out
}

/// Why a value was refused.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed(&'static str);

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.0.len() < n {
            return Err(Malformed("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Malformed> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, Malformed> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(a))
    }

    fn u64(&mut self) -> Result<u64, Malformed> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }

    fn count(&mut self) -> Result<u32, Malformed> {
        let n = self.u32()?;
        if n > MAX_ITEMS {
            return Err(Malformed("too many items"));
        }
        Ok(n)
    }

    fn bytes(&mut self) -> Result<&'a [u8], Malformed> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn name(&mut self) -> Result<HeaderName, Malformed> {
        HeaderName::from_bytes(self.bytes()?).map_err(|_| Malformed("bad field name"))
    }

    fn value(&mut self) -> Result<HeaderValue, Malformed> {
        HeaderValue::from_bytes(self.bytes()?).map_err(|_| Malformed("bad field value"))
    }

    fn text(&mut self) -> Result<Box<str>, Malformed> {
        std::str::from_utf8(self.bytes()?).map(Box::from).map_err(|_| Malformed("not UTF-8"))
    }
}

/// A value back into its entries; refused whole when anything in it is off.
pub fn decode(value: &[u8]) -> Result<Vec<Entry>, Malformed> {
    let mut r = Reader(value);
    if r.take(4)? != MAGIC {
        return Err(Malformed("not a cache value of this version"));
    }
    let n = r.count()?;
    let mut out = Vec::with_capacity(n.min(16) as usize);
    for _ in 0..n {
        let status = StatusCode::from_u16(r.u16()?).map_err(|_| Malformed("bad status"))?;
        let received = UNIX_EPOCH.checked_add(Duration::from_millis(r.u64()?)).ok_or(Malformed("bad time"))?;
        let [initial_age, fresh_for, stale_while_revalidate, stale_if_error] =
            [r.u64()?, r.u64()?, r.u64()?, r.u64()?].map(Duration::from_millis);
        let revalidate = match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(Malformed("bad flag")),
        };
        let mut headers = HeaderMap::new();
        for _ in 0..r.count()? {
            let name = r.name()?;
            headers.append(name, r.value()?);
        }
        let mut vary = Vec::new();
        for _ in 0..r.count()? {
            let name = r.name()?;
            let value = match r.u8()? {
                0 => None,
                1 => Some(r.value()?),
                _ => return Err(Malformed("bad flag")),
            };
            vary.push((name, value));
        }
        let mut tags = Vec::new();
        for _ in 0..r.count()? {
            tags.push(r.text()?);
        }
        let path = r.text()?;
        let body = Bytes::copy_from_slice(r.bytes()?);
        out.push(Entry {
            status,
            etag: headers.get(header::ETAG).cloned(),
            last_modified: super::rfc::date(&headers, &header::LAST_MODIFIED),
            headers,
            body,
            received,
            initial_age,
            fresh_for,
            stale_while_revalidate,
            stale_if_error,
            revalidate,
            vary: vary.into(),
            tags: tags.into(),
            path,
        });
    }
    if !r.0.is_empty() {
        return Err(Malformed("trailing bytes"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        let mut headers = HeaderMap::new();
        headers.insert(header::ETAG, HeaderValue::from_static("\"v1\""));
        headers.append(header::VARY, HeaderValue::from_static("accept-language"));
        headers.insert(header::LAST_MODIFIED, HeaderValue::from_static("Wed, 01 Jan 2025 00:00:00 GMT"));
        Entry {
            status: StatusCode::OK,
            headers,
            body: Bytes::from_static(b"{\"a\":1}"),
            received: UNIX_EPOCH + Duration::from_millis(1_765_000_000_123),
            initial_age: Duration::from_secs(3),
            fresh_for: Duration::from_secs(60),
            stale_while_revalidate: Duration::from_secs(5),
            stale_if_error: Duration::ZERO,
            revalidate: true,
            etag: Some(HeaderValue::from_static("\"v1\"")),
            last_modified: super::super::rfc::date(
                &HeaderMap::from_iter([(header::DATE, HeaderValue::from_static("Wed, 01 Jan 2025 00:00:00 GMT"))]),
                &header::DATE,
            ),
            vary: Box::new([(HeaderName::from_static("accept-language"), Some(HeaderValue::from_static("en")))]),
            tags: Box::new(["a".into(), "b".into()]),
            path: "api.test/x".into(),
        }
    }

    #[test]
    fn entries_come_back_as_they_went() {
        let e = Arc::new(entry());
        let mut other = entry();
        other.vary = Box::new([(HeaderName::from_static("accept-language"), None)]);
        let value = encode(&[e.clone(), Arc::new(other)]);
        let back = decode(&value).unwrap();
        assert_eq!(back.len(), 2);
        let b = &back[0];
        assert_eq!((b.status, &b.headers, &b.body, b.received), (e.status, &e.headers, &e.body, e.received));
        assert_eq!(
            (b.initial_age, b.fresh_for, b.stale_while_revalidate),
            (e.initial_age, e.fresh_for, e.stale_while_revalidate)
        );
        assert_eq!((b.revalidate, &b.etag, b.last_modified), (true, &e.etag, e.last_modified));
        assert_eq!((&b.vary, &b.tags, &b.path), (&e.vary, &e.tags, &e.path));
        assert_eq!(back[1].vary[0].1, None);
    }

    #[test]
    fn a_broken_value_is_refused_whole() {
        let value = encode(&[Arc::new(entry())]);
        for cut in 0..value.len() {
            assert!(decode(&value[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = value.clone();
        extra.push(0);
        assert_eq!(decode(&extra).err(), Some(Malformed("trailing bytes")));
        let mut other = value.clone();
        other[3] = b'9';
        assert!(decode(&other).is_err());
        let mut huge = value;
        huge[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(&huge).err(), Some(Malformed("too many items")));
    }
}
