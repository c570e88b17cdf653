//! Multi-tenancy: the tenant from the subdomain, a consumer or a token; each tenant's plan,
//! limits and feature flags, from the config and from Redis (changed at run time).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;

use crate::support::*;

async fn as_host(gw: &Gateway, host: &str, path: &str, extra: &[(&str, &str)]) -> (u16, http::HeaderMap, String) {
    let mut b = http::Request::get(gw.url(path)).header("host", host);
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    let (s, h, body) = send(b.body(Full::new(Bytes::new())).unwrap()).await;
    (s.as_u16(), h, body)
}

fn tenants_config(stable: &TestUpstream, beta: &TestUpstream, redis: Option<&RedisServer>) -> String {
    let (redis_top, redis_tenants) = match redis {
        Some(r) => (format!("redis: {{ url: \"{}\" }}\n", r.url()), "  redis: { cache_ttl: 30s }\n"),
        None => (String::new(), ""),
    };
    config(&format!(
        r#"{redis_top}upstreams:
  stable: {{ targets: [{{ url: {} }}] }}
  beta: {{ targets: [{{ url: {} }}] }}
plans:
  pro: {{ rate_limit: [{{ limit: 5, per: 1m }}] }}
tenants:
  from: [subdomain]
{redis_tenants}  settings:
    acme: {{ plan: pro, flags: [beta] }}
    globex: {{ rate_limit: [{{ limit: 2, per: 1m }}] }}
    initech: {{}}
    umbrella: {{}}
routes:
  - name: api
    match: {{ prefix: /api }}
    upstream: stable
    flag_upstreams: {{ beta: beta }}
    plugins: [{{ rate_limit: {{ limits: [{{ limit: 3, per: 1m }}], key: [tenant] }} }}]
"#,
        stable.url(),
        beta.url()
    ))
}

async fn allowed(gw: &Gateway, host: &str, n: usize) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        if as_host(gw, host, "/api/x", &[]).await.0 == 200 {
            ok += 1;
        }
    }
    ok
}

#[tokio::test]
async fn each_tenant_has_its_plan_limits_and_flags() {
    let stable = TestUpstream::start("stable").await;
    let beta = TestUpstream::start("beta").await;
    let gw = Gateway::start(&tenants_config(&stable, &beta, None));
    // The tenant from the subdomain is forwarded; a client's copy never is.
    let (s, h, body) = as_host(&gw, "initech.api.test", "/api/x", &[("x-tenant-id", "acme")]).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(stable.last_headers()["x-tenant-id"], "initech");
    assert_eq!(h["ratelimit-limit"], "3", "a tenant without settings gets the route's limit");
    // acme has the beta flag: its requests go to the beta upstream.
    let before = stable.hits();
    assert_eq!(as_host(&gw, "acme.api.test", "/api/x", &[]).await.0, 200);
    assert_eq!(beta.last_headers()["x-tenant-id"], "acme");
    assert_eq!(stable.hits(), before, "acme reached the stable upstream");
    // Plans and own limits: acme (plan pro) 5, globex (own limit) 2, initech 3.
    assert_eq!(allowed(&gw, "acme.api.test", 8).await, 4, "acme has used 1 of its 5");
    assert_eq!(allowed(&gw, "globex.api.test", 5).await, 2);
    assert_eq!(allowed(&gw, "initech.api.test", 5).await, 2, "initech has used 1 of its 3");
    // One tenant exhausting its limit never affects another's.
    assert_eq!(allowed(&gw, "umbrella.api.test", 3).await, 3);
    // A subdomain that is no tenant names none (no header, no budget of its own), and
    // neither does a different spelling of a tenant's.
    let (s, _, _) = as_host(&gw, "nobody.api.test", "/api/x", &[("x-tenant-id", "acme")]).await;
    assert_eq!(s, 200);
    assert!(stable.last_headers().get("x-tenant-id").is_none());
    let before = beta.hits();
    assert_eq!(as_host(&gw, "ACME.api.test", "/api/x", &[]).await.0, 429, "ACME is acme, whose budget is spent");
    assert_eq!(beta.hits(), before);
    assert!(
        Gateway::eventually(Duration::from_secs(3), || async {
            let log = gw.access_log();
            log.iter().any(|l| l["backendService"] == "beta")
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_settings_changed_in_redis_apply_on_every_instance_within_a_second() {
    let redis = RedisServer::start();
    let stable = TestUpstream::start("stable").await;
    let beta = TestUpstream::start("beta").await;
    let cfg = tenants_config(&stable, &beta, Some(&redis));
    let a = Gateway::start(&cfg);
    let b = Gateway::start(&cfg);
    let subscribed = |gw: &Gateway| {
        let url = gw.admin_url("/metrics");
        async move {
            Gateway::eventually(Duration::from_secs(10), || {
                let url = url.clone();
                async move { get(&url).await.2.contains(r#"gateway_redis_subscribed{channel="tenants"} 1"#) }
            })
            .await
        }
    };
    assert!(subscribed(&a).await && subscribed(&b).await);
    // Nothing in Redis: the config's settings (initech has none: stable upstream).
    for gw in [&a, &b] {
        assert_eq!(as_host(gw, "initech.api.test", "/api/x", &[]).await.0, 200);
    }
    assert_eq!(beta.hits(), 0);
    // Turn the beta flag on for initech in Redis and publish the change: with a 30 s
    // cache, only the notice can make every instance see it this soon.
    redis.cmd(&["HSET", "portico:tenant:initech", "flags", "beta", "rate_limit", "50/1m"]);
    redis.cmd(&["PUBLISH", "portico:tenants", "initech"]);
    let started = std::time::Instant::now();
    for gw in [&a, &b] {
        assert!(
            Gateway::eventually(Duration::from_secs(5), || async {
                let before = beta.hits();
                let (s, h, _) = as_host(gw, "initech.api.test", "/api/x", &[]).await;
                s == 200 && beta.hits() > before && h["ratelimit-limit"] == "50"
            })
            .await,
            "an instance did not apply the change (5 s leaves room for a loaded machine)"
        );
    }
    eprintln!("both instances applied the change after {:?}", started.elapsed());
    // Redis wins over the config: acme loses its flag and its plan there.
    redis.cmd(&["HSET", "portico:tenant:acme", "flags", "", "plan", ""]);
    redis.cmd(&["PUBLISH", "portico:tenants", "acme"]);
    assert!(
        Gateway::eventually(Duration::from_secs(5), || async {
            let (s, h, _) = as_host(&a, "acme.api.test", "/api/x", &[]).await;
            s == 200 && h["ratelimit-limit"] == "3"
        })
        .await
    );
}

/// A tenant's limits from Redis, several and with any algorithm, on a `store: redis` route:
/// one fleet-wide budget, exact to the request, across three instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_redis_limits_are_one_budget_for_three_instances() {
    let up = TestUpstream::start("u").await;
    let redis = RedisServer::start();
    redis.cmd(&["HSET", "portico:tenant:acme", "rate_limit", "7/1m, 1000/1d"]);
    redis.cmd(&["HSET", "portico:tenant:globex", "rate_limit", "4/1h algorithm=gcra, 50/1d algorithm=sliding_window"]);
    redis.cmd(&["HSET", "portico:tenant:bad", "rate_limit", "4/1m algorithm=fixed_window burst=9", "plan", ""]);
    let yaml = config(&format!(
        r#"redis: {{ url: "{}", timeout: 1s }}
upstreams:
  u: {{ targets: [{{ url: {} }}] }}
tenants:
  from: [subdomain]
  redis: {{ cache_ttl: 30s }}
  settings: {{ acme: {{}}, globex: {{}}, bad: {{}} }}
routes:
  - name: api
    match: {{ prefix: /api }}
    upstream: u
    plugins: [{{ rate_limit: {{ limits: [{{ limit: 100, per: 1m }}], key: [tenant], store: redis }} }}]
"#,
        redis.url(),
        up.url()
    ));
    let fleet = [Gateway::start(&yaml), Gateway::start(&yaml), Gateway::start(&yaml)];
    let allowed = |tenant: &'static str, n: usize| {
        let fleet = &fleet;
        async move {
            let mut ok = 0;
            for i in 0..n {
                let (s, h, _) = as_host(&fleet[i % 3], &format!("{tenant}.api.test"), "/api/x", &[]).await;
                if s == 200 {
                    ok += 1;
                } else {
                    assert_eq!(s, 429, "{tenant}: {h:?}");
                }
            }
            ok
        }
    };
    assert_eq!(allowed("acme", 12).await, 7, "acme: 7/1m from Redis, shared by the three instances");
    assert_eq!(allowed("globex", 9).await, 4, "globex: gcra 4/1h from Redis");
    // A hash limit that fails the config's checks is ignored (logged): the route's 100/1m.
    assert_eq!(allowed("bad", 9).await, 9);
    assert!(
        fleet[0].logged("tenant rate_limit in redis ignored").await
            || fleet[1].logged("tenant rate_limit in redis ignored").await
    );
}
