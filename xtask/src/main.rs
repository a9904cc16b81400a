//! Developer tasks cargo alone cannot do: install the eBPF toolchain, run the agent as root with
//! demo-friendly timeouts, and run every check CI runs.

mod bench;
mod compare;
mod demo;
mod fuzz;
mod libpcap;
mod setup;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building needs (pinned nightly with rust-src, clippy and rustfmt;
    /// bpf-linker; libpcap), and with `--tests` what the tests need (Debian and Python packages).
    Setup {
        /// Also install the test dependencies.
        #[arg(long)]
        tests: bool,
    },
    /// Format every crate with the pinned nightly's rustfmt (rustfmt.toml's keys need it).
    Fmt,
    /// Build only the kernel program (bpfel-unknown-none), to check it compiles.
    BuildEbpf,
    /// Build and run the agent as root. Without arguments: capture on lo with short timeouts,
    /// plus a little loopback traffic so records show within seconds.
    Run {
        /// Do not generate demo traffic on lo.
        #[arg(long)]
        no_demo: bool,
        /// Build with optimisations.
        #[arg(long)]
        release: bool,
        /// Arguments for devourer (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The statically linked agent the container image ships (musl, release), for x86_64 or
    /// (cross-built with zig, cargo-zigbuild) aarch64.
    BuildStatic {
        #[arg(long, value_enum, default_value_t = Arch::X86_64)]
        target: Arch,
    },
    /// Benchmarks (as root): a table, bench/results/latest.json and docs/benchmarks.md.
    Bench {
        /// One benchmark (kernel, datapath, userspace, replay, dns, pressure), all when omitted;
        /// `report` re-renders docs/benchmarks.md from the saved results.
        name: Option<String>,
    },
    /// Replay every capture under DIR with BASELINE (an agent binary) and the current build;
    /// fail unless their records are byte for byte the same.
    CompareRecords { baseline: PathBuf, dir: PathBuf },
    /// Runs the fuzz targets (cargo fuzz, pinned nightly) for a bounded time each.
    Fuzz {
        /// One target (all when omitted).
        target: Option<String>,
        /// Seconds per target.
        #[arg(long, default_value_t = 30)]
        seconds: u32,
    },
    /// Downloads and prepares the kernel matrix's kernels (Debian's, under target/vm) and
    /// prints the directory the matrix tests read (`DEVOURER_VM_DIR`).
    Kernels,
    /// Everything CI runs: setup, fmt, clippy, unit tests, kernel parser tests, end-to-end tests.
    Test {
        /// Skip fmt and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Only tests whose name contains this (passed to the test harness).
        filter: Option<String>,
    },
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs a tool to its end with its output on our stderr: stdout is for what a command prints
/// (records from `cargo xtask run`, a path from `build-static`), never installers' chatter.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    cmd.stdout(std::process::Stdio::from(std::io::stderr()));
    run_foreground(cmd)
}

/// Runs a command with the terminal's stdout (the agent of `cargo xtask run`).
fn run_foreground(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

/// `cargo` for a whole test run: no incremental cache, which a run from a clean clone never
/// reuses and which made up a third of its `target/` (CI's disk is not unlimited).
fn ci_cargo() -> Command {
    let mut c = cargo();
    if std::env::var_os("CARGO_INCREMENTAL").is_none() {
        c.env("CARGO_INCREMENTAL", "0");
    }
    c
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions; declared here to avoid a libc dependency.
    unsafe extern "C" {
        safe fn geteuid() -> u32;
    }
    geteuid() == 0
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup { tests: false } => setup::setup(),
        Cmd::Setup { tests: true } => setup::setup_tests(),
        Cmd::Fmt => {
            setup::setup()?;
            let tc = setup::ebpf_toolchain()?;
            run_cmd(
                Command::new("rustup")
                    .current_dir(workspace_root())
                    .args(["run", &tc, "cargo", "fmt", "--all"]),
            )
        }
        Cmd::BuildEbpf => {
            setup::setup()?;
            let tc = setup::ebpf_toolchain()?;
            run_cmd(
                Command::new("rustup")
                    .current_dir(workspace_root())
                    .args([
                        "run",
                        &tc,
                        "cargo",
                        "build",
                        "--release",
                        "-p",
                        "devourer-ebpf",
                    ])
                    .args([
                        "--bins",
                        "--target",
                        "bpfel-unknown-none",
                        "-Z",
                        "build-std=core",
                    ]),
            )
        }
        Cmd::Run {
            no_demo,
            release,
            args,
        } => run(no_demo, release, args),
        Cmd::Test { no_lint, filter } => test(no_lint, filter),
        Cmd::Bench { name } => bench::bench(name),
        Cmd::BuildStatic { target } => build_static(target).map(|p| println!("{}", p.display())),
        Cmd::CompareRecords { baseline, dir } => compare::compare(&baseline, &dir),
        Cmd::Kernels => {
            let dir = vm_dir();
            vm::prepare(&dir)?;
            println!("{}", dir.display());
            Ok(())
        }
        Cmd::Fuzz { target, seconds } => {
            setup::setup_tests()?;
            fuzz::fuzz(target, seconds)
        }
    }
}

fn run(no_demo: bool, release: bool, args: Vec<String>) -> Result<()> {
    setup::setup()?;
    let mut build = cargo();
    build.args(["build", "-p", "devourer"]);
    if release {
        build.arg("--release");
    }
    run_cmd(&mut build)?;
    let bin = workspace_root()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("devourer");
    let demo = args.is_empty() && !no_demo;
    let mut args = if args.is_empty() {
        [
            "capture",
            "-i",
            "lo",
            "--idle-timeout",
            "5s",
            "--tcp-linger",
            "1s",
        ]
        .map(String::from)
        .to_vec()
    } else {
        args
    };
    if demo {
        let d = demo::start();
        if d.dns_port != 53 {
            args.extend(["--dns-ports".into(), format!("53,{}", d.dns_port)]);
        }
    }
    let mut cmd = if is_root() {
        Command::new(&bin)
    } else {
        let mut c = Command::new("sudo");
        c.arg("-E").arg(&bin);
        c
    };
    cmd.args(&args);
    run_foreground(&mut cmd)
}

/// Where the kernel matrix's kernels are kept between runs.
fn vm_dir() -> PathBuf {
    workspace_root().join("target/vm")
}

/// The architectures the static agent is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Arch {
    #[value(name = "x86_64")]
    X86_64,
    Aarch64,
}

impl Arch {
    fn triple(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64-unknown-linux-musl",
            Self::Aarch64 => "aarch64-unknown-linux-musl",
        }
    }
}

/// Builds the static agent (what the Dockerfile copies) and returns its path, capture on
/// request included (libpcap built statically from Debian's source, [`libpcap`]). aarch64 is
/// cross-built from x86_64 with zig as its C compiler and linker (cargo-zigbuild; zig from
/// PyPI): Debian has no aarch64 musl cross toolchain, and a static glibc breaks NSS. The eBPF
/// object is the same for both.
fn build_static(arch: Arch) -> Result<PathBuf> {
    let triple = arch.triple();
    run_cmd(Command::new("rustup").args(["target", "add", triple]))?;
    let features = [
        "build",
        "--release",
        "-p",
        "devourer",
        "--target",
        triple,
        "--no-default-features",
        "--features",
        "bigquery,k8s,fluent-tls,kafka,otlp,capture-requests",
    ];
    let (pcap_dir, pcap_version) = libpcap::static_libpcap(arch)?;
    match arch {
        Arch::X86_64 => run_cmd(
            cargo()
                .args(features)
                .env("CC_x86_64_unknown_linux_musl", "musl-gcc")
                .env("LIBPCAP_LIBDIR", &pcap_dir)
                .env("LIBPCAP_VER", &pcap_version),
        )?,
        Arch::Aarch64 => {
            setup::zig()?;
            let mut zig = cargo();
            zig.arg("zigbuild")
                .args(&features[1..])
                .env("LIBPCAP_LIBDIR", &pcap_dir)
                .env("LIBPCAP_VER", &pcap_version);
            run_cmd(&mut zig)?;
        }
    }
    Ok(workspace_root().join(format!("target/{triple}/release/devourer")))
}

fn test(no_lint: bool, filter: Option<String>) -> Result<()> {
    setup::setup_tests()?;
    let tc = setup::ebpf_toolchain()?;
    if !no_lint {
        // The pinned nightly's rustfmt: rustfmt.toml's import grouping keys are nightly-only.
        run_cmd(
            Command::new("rustup")
                .current_dir(workspace_root())
                .args(["run", &tc, "cargo", "fmt", "--all", "--", "--check"]),
        )?;
        run_cmd(ci_cargo().args([
            "clippy",
            "--workspace",
            "--exclude",
            "devourer-ebpf",
            "--exclude",
            "devourer-fuzz",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        // The fuzz targets.
        run_cmd(ci_cargo().args(["clippy", "-p", "devourer-fuzz", "--", "-D", "warnings"]))?;
        // The agent without capture on request (a build on a host without libpcap), and
        // without any optional part (what the fuzz targets link).
        for features in [&["--features", "bigquery"][..], &[]] {
            run_cmd(
                ci_cargo()
                    .args(["clippy", "-p", "devourer", "--no-default-features"])
                    .args(features)
                    .args(["--lib", "--", "-D", "warnings"]),
            )?;
        }
        // The kernel crate on its own: feature unification would otherwise pull std into it.
        run_cmd(
            Command::new("rustup")
                .current_dir(workspace_root().join("devourer-ebpf"))
                .args([
                    "run",
                    &tc,
                    "cargo",
                    "clippy",
                    "--target",
                    "bpfel-unknown-none",
                ])
                // Both objects: the agent's and the benchmarks' (which adds baselines).
                .args(["-Z", "build-std=core", "--bins", "--features", "bench"])
                .args(["--", "-D", "warnings"]),
        )?;
    }
    let filter: Vec<String> = filter.into_iter().collect();
    // Unit tests: the agent, shared types, xtask.
    run_cmd(
        ci_cargo()
            .args(["test", "--workspace", "--exclude", "devourer-ebpf"])
            .args([
                "--exclude",
                "devourer-tests",
                "--exclude",
                "devourer-fuzz",
                "--",
            ])
            .args(&filter),
    )?;
    // The kernel program's parser, on the host.
    run_cmd(
        ci_cargo()
            .args(["test", "-p", "devourer-ebpf", "--lib", "--"])
            .args(&filter),
    )?;
    // What the agent reads from the network, files and requests, fuzzed for a bounded time
    // (skipped when only some tests are asked for).
    if filter.is_empty() {
        fuzz::fuzz(None, 30)?;
    }
    // End-to-end: the real binary against real traffic in network namespaces, as root.
    run_cmd(ci_cargo().args(["build", "-p", "devourer"]))?;
    if !is_root() {
        eprintln!(
            "xtask: not root, so the end-to-end tests (BPF programs, network namespaces) will skip; run as root for them"
        );
    }
    let bin = workspace_root().join("target/debug/devourer");
    let static_bin = build_static(Arch::X86_64)?;
    let static_aarch64 = build_static(Arch::Aarch64)?;
    // The kernel matrix: Debian's kernels the VM tests boot.
    let kernels = vm_dir();
    vm::prepare(&kernels).context("preparing the kernel matrix")?;
    run_cmd(
        ci_cargo()
            .env("DEVOURER_BIN", &bin)
            .env("DEVOURER_STATIC_BIN", &static_bin)
            .env("DEVOURER_STATIC_AARCH64_BIN", &static_aarch64)
            .env("DEVOURER_VM_DIR", &kernels)
            .args(["test", "-p", "devourer-tests", "--", "--test-threads=1"])
            .args(&filter),
    )
}
