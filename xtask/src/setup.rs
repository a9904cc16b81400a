//! `cargo xtask setup`: the pinned nightly with rust-src, and bpf-linker built against that
//! nightly's own LLVM (no prebuilt LLVM is downloadable here). Quick when already done.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{is_root, run_cmd, workspace_root};

const BPF_LINKER_VERSION: &str = "0.13.0";
/// The LLVM major version of the pinned nightly, as bpf-linker's feature name.
const BPF_LINKER_LLVM_FEATURE: &str = "llvm-22";

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

fn quiet_ok(cmd: &mut Command) -> bool {
    cmd.output().is_ok_and(|o| o.status.success())
}

/// libpcap's headers and library, which the agent links for capture on request: installed
/// with apt-get when missing (Debian and Ubuntu), else a clear error.
fn libpcap() -> Result<()> {
    let present = ["/usr/include/pcap.h", "/usr/include/pcap/pcap.h"]
        .iter()
        .any(|p| std::path::Path::new(p).exists())
        || quiet_ok(Command::new("pkg-config").args(["--exists", "libpcap"]));
    if present {
        return Ok(());
    }
    let hint = "install libpcap's development files (Debian: libpcap-dev), or build the agent \
                with --no-default-features to leave capture on request out";
    if !quiet_ok(Command::new("apt-get").arg("--version")) {
        bail!("libpcap headers not found: {hint}");
    }
    let apt = |args: &[&str]| {
        let mut cmd = Command::new(if is_root() { "apt-get" } else { "sudo" });
        if !is_root() {
            cmd.arg("apt-get");
        }
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        run_cmd(&mut cmd)
    };
    let install = [
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "libpcap-dev",
    ];
    // A fresh machine may have no package lists yet.
    apt(&install)
        .or_else(|_| apt(&["update", "-q"]).and_then(|()| apt(&install)))
        .with_context(|| format!("installing libpcap-dev failed: {hint}"))
}

pub fn setup() -> Result<()> {
    libpcap()?;
    let tc = ebpf_toolchain()?;
    let has_src = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", &tc])
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains("rust-src")
        });
    if !has_src {
        run_cmd(Command::new("rustup").args([
            "toolchain",
            "install",
            &tc,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
    }
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
