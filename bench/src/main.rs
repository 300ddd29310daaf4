//! The benchmark suite of the webhook service: prints a markdown table of the figures in
//! `docs/benchmarks.md`. Run in release:
//!
//! ```sh
//! cargo build --release -p registration -p change-capture -p flush -p delivery
//! cargo run --release -p webhooks-bench -- all
//! ```
//!
//! or one figure: `concurrency`, `throughput`, `fanout`, `coldstart`, `rss`, `cost`,
//! `durable`, `load`, `sdkcpu`.

mod allocs;
mod child;
mod coldstart;
mod cost;
mod delivery;
mod durable;
mod fanout;
mod load;
mod proxy;
mod receiver;
mod report;
mod sdkcpu;
mod simulated;

use report::Table;
use std::time::Instant;

const FIGURES: [&str; 9] = [
    "concurrency",
    "throughput",
    "fanout",
    "coldstart",
    "rss",
    "cost",
    "durable",
    "load",
    "sdkcpu",
];

fn usage() -> ! {
    eprintln!(
        "usage: webhooks-bench all | {} ...\n\
         (cost, load and sdkcpu start moto server from .venv/bin/moto_server, or use MOTO_ENDPOINT)
\
         or: webhooks-bench delivery-loop orcid|members|bare [rounds]   (one contender of figure 2 alone, to profile)",
        FIGURES.join(" | ")
    );
    std::process::exit(2)
}

#[global_allocator]
static ALLOCATOR: allocs::Counting = allocs::Counting;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The memory figure's child process: one delivery invocation, then its peak RSS.
    if args.first().map(String::as_str) == Some("rss-child") {
        let url = args.get(1).cloned().unwrap_or_else(|| usage());
        let style = args
            .get(2)
            .and_then(|a| delivery::Style::parse(a))
            .unwrap_or(delivery::Style::Orcid);
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let kib = runtime.block_on(delivery::rss_child(&url, style));
        println!("peak_rss_kib={kib}");
        return;
    }
    // The cold start figure's child process: its first requests, timed.
    if args.first().map(String::as_str) == Some("first-request-child") {
        let url = args.get(1).cloned().unwrap_or_else(|| usage());
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        match runtime.block_on(coldstart::first_requests_child(&url)) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1)
            }
        }
        return;
    }
    // Figure 2's child process: one contender's timed pass.
    if args.first().map(String::as_str) == Some("throughput-child") {
        let contender = args
            .get(1)
            .and_then(|a| delivery::Contender::parse(a))
            .unwrap_or_else(|| usage());
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        println!(
            "{}",
            runtime.block_on(delivery::throughput_child(contender))
        );
        return;
    }
    // One contender of figure 2 alone, for a profiler (docs/benchmarks.md, "Misses").
    if args.first().map(String::as_str) == Some("delivery-loop") {
        let style = match args.get(1).map(String::as_str) {
            Some("bare") => None,
            Some(style) => Some(delivery::Style::parse(style).unwrap_or_else(|| usage())),
            None => usage(),
        };
        let rounds = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(5);
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(delivery::one_contender(style, rounds));
        return;
    }
    let figures: Vec<&str> = if args.is_empty() || args.iter().any(|a| a == "all") {
        // The durable figure runs for minutes (a million deliveries), the load model for
        // millions of changes: only when named.
        FIGURES
            .iter()
            .copied()
            .filter(|f| *f != "durable" && *f != "load" && *f != "sdkcpu")
            .collect()
    } else {
        for a in &args {
            if !FIGURES.contains(&a.as_str()) {
                usage();
            }
        }
        FIGURES
            .iter()
            .copied()
            .filter(|f| args.iter().any(|a| a == f))
            .collect()
    };
    // Started before any other thread exists: the moto endpoint goes into the environment.
    let moto = ["cost", "load", "sdkcpu"]
        .iter()
        .any(|f| figures.contains(f))
        .then(cost::Moto::start);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let started = Instant::now();
    let mut table = Table::default();
    runtime.block_on(async {
        for figure in &figures {
            eprintln!("== {figure}");
            match *figure {
                "concurrency" => delivery::concurrency(&mut table).await,
                "throughput" => delivery::throughput(&mut table).await,
                "fanout" => fanout::fanout(&mut table).await,
                "coldstart" => coldstart::coldstart(&mut table).await,
                "rss" => delivery::rss(&mut table).await,
                "cost" => cost::cost(&mut table).await,
                "durable" => durable::durable(&mut table).await,
                // On a paused clock of its own, on a thread outside this runtime.
                "load" => std::thread::scope(|s| {
                    s.spawn(|| load::load(&mut table))
                        .join()
                        .expect("the load model")
                }),
                "sdkcpu" => sdkcpu::sdkcpu(&mut table),
                _ => unreachable!(),
            }
        }
    });
    drop(moto);
    println!("{}", machine());
    println!("{}", table.markdown());
    println!(
        "(took {:.0} s: webhooks-bench {})",
        started.elapsed().as_secs_f64(),
        figures.join(" ")
    );
}

/// A line about the machine the figures were taken on.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or("?".into(), |k| format!("{:.0} GiB", k as f64 / 1048576.0));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "Machine: {cpu}, {cores} cores, {mem} RAM, Linux {} ({})\n",
        kernel.trim(),
        std::env::consts::ARCH
    )
}
