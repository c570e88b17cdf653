//! The `portico` binary: parse the command line, load the config, run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Portico: an API gateway in one binary.
#[derive(Debug, Parser)]
#[command(name = "portico", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve traffic. SIGHUP or a change of the file reloads; SIGTERM/SIGINT drains and exits.
    Run {
        /// The config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Check a config file; print every problem with its path and position.
    Validate {
        /// The config file.
        file: PathBuf,
    },
    /// Print the JSON Schema of the config file.
    Schema,
    /// Print routes for the operations of an OpenAPI 3.0/3.1 document: one per path, with
    /// its methods, validated against the document.
    RoutesFromOpenapi {
        /// The OpenAPI document (YAML or JSON).
        file: PathBuf,
        /// The upstream the routes send to.
        #[arg(long, default_value = "api")]
        upstream: String,
        /// A path prefix clients call the API under (`/api`): routes match under it, and
        /// validation strips it (`base_path`).
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Read an API key from standard input (one line) and print its SHA-256, as
    /// `consumers[].api_keys[].sha256` wants it. The key itself never goes in the config.
    HashKey,
    /// Start demo services and a gateway in front of them, on loopback.
    Demo {
        /// Gateway port (0 picks a free one).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Admin port (0 picks a free one).
        #[arg(long, default_value_t = 9901)]
        admin_port: u16,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Run { config } => run(&config),
        Command::Validate { file } => return validate(&file),
        Command::Schema => {
            print!("{}", portico_config::json_schema());
            Ok(())
        }
        Command::Demo { port, admin_port } => demo(port, admin_port),
        Command::RoutesFromOpenapi { file, upstream, prefix } => {
            routes_from_openapi(&file, &upstream, prefix.as_deref())
        }
        Command::HashKey => hash_key(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portico: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn routes_from_openapi(file: &Path, upstream: &str, prefix: Option<&str>) -> anyhow::Result<()> {
    let prefix = prefix.map(|p| p.trim_end_matches('/')).filter(|p| !p.is_empty());
    if let Some(p) = prefix {
        anyhow::ensure!(p.starts_with('/'), "--prefix {p:?} must start with /");
    }
    let path = file.to_str().context("the file's path is not UTF-8")?;
    let doc = portico::contract::openapi::Document::load(path).map_err(|errors| {
        let list: Vec<String> =
            errors.iter().map(|(at, e)| if at.is_empty() { e.clone() } else { format!("{at}: {e}") }).collect();
        anyhow::anyhow!("{path}: {}", list.join("\n"))
    })?;
    print!("{}", portico::contract::openapi::routes_yaml(&doc, path, upstream, prefix));
    Ok(())
}

fn hash_key() -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).context("reading the key from standard input")?;
    let key = line.trim_end_matches(['\n', '\r']);
    anyhow::ensure!(!key.is_empty(), "no key on standard input");
    println!("{}", portico::identity::hex(&portico::identity::sha256(key.as_bytes())));
    Ok(())
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTICO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

fn env_lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Parses, validates and compiles (without binding anything) a config file.
fn load(path: &Path) -> Result<(portico_config::Config, String), portico_config::ConfigErrors> {
    let src = portico_config::read_file(path)?;
    let parsed = portico_config::parse(&src, env_lookup)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| {
        portico_config::ConfigErrors(vec![portico_config::ConfigError::new("", format!("cannot start runtime: {e}"))])
    })?;
    // Compiling catches what only the router can see, such as conflicting templates.
    let metrics = std::sync::Arc::new(portico::observe::Metrics::new());
    let compiled = rt.block_on(async { portico::compile::Snapshot::compile(parsed.config.clone(), None, &metrics) });
    compiled.map_err(|e| e.locate(&parsed.locator))?;
    Ok((parsed.config, src))
}

fn validate(path: &Path) -> ExitCode {
    match load(path) {
        Ok((c, _)) => {
            println!(
                "{}: ok ({} listeners, {} upstreams, {} routes)",
                path.display(),
                c.listeners.len(),
                c.upstreams.len(),
                c.routes.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            let n = errors.0.len();
            eprintln!("{}: {n} error{}", path.display(), if n == 1 { "" } else { "s" });
            ExitCode::FAILURE
        }
    }
}

/// Worker threads: `TOKIO_WORKER_THREADS` if set, else the config (0 = one per core).
fn build_runtime(configured: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let threads = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(configured);
    let threads = if threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { threads };
    let rt = if threads == 1 {
        // One thread: the current-thread scheduler avoids work-stealing bookkeeping.
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?
    };
    Ok(rt)
}

fn run(path: &Path) -> anyhow::Result<()> {
    let (config, source) = load(path).map_err(|e| anyhow::anyhow!("{}: invalid config:\n{e}", path.display()))?;
    let rt = build_runtime(config.runtime.worker_threads)?;
    rt.block_on(async {
        let signals = portico::Signals::install().context("installing signal handlers")?;
        let gateway = portico::Gateway::start(config, Some(path.to_path_buf())).await?;
        gateway.loaded_from(source);
        gateway.run_until_signal(signals).await;
        anyhow::Ok(())
    })?;
    // Connections still open after the drain timeout are closed by exiting.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    Ok(())
}

fn demo(port: u16, admin_port: u16) -> anyhow::Result<()> {
    let rt = build_runtime(0)?;
    rt.block_on(async {
        let signals = portico::Signals::install().context("installing signal handlers")?;
        let mut vars = portico::demo::start_services().await.context("starting demo services")?;
        vars.insert("GATEWAY_ADDR", format!("127.0.0.1:{port}"));
        vars.insert("ADMIN_ADDR", format!("127.0.0.1:{admin_port}"));
        let config = portico::demo::config(&vars).map_err(|e| anyhow::anyhow!("demo config: {e}"))?;
        let gateway = portico::Gateway::start(config, None)
            .await
            .context("starting the gateway (is the port in use? try --port 0 --admin-port 0)")?;
        let addr = gateway.listener_addrs().get("public").copied().context("no public listener")?;
        let token = portico::demo::demo_token(&vars);
        println!("{}", portico::demo::instructions(addr, gateway.admin_addr(), &token));
        gateway.run_until_signal(signals).await;
        anyhow::Ok(())
    })?;
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    Ok(())
}
