//! libpcap as a static library for the static (musl) builds, so the shipped image can take
//! captures on request: Debian's own source package (`apt-get source libpcap`, with a deb-src
//! entry added when apt has none), configured for a packet-socket-only Linux capture (no
//! D-Bus, USB, Bluetooth, RDMA, netmap or remote capture) and built with the C compiler the
//! static build uses: musl-gcc for x86_64 (the kernel's UAPI headers from linux-libc-dev
//! beside it), zig for aarch64. Built once under target/static-libpcap.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{
    Arch, run_cmd,
    setup::{apt_install, missing_debian, quiet_ok},
    workspace_root,
};

/// A deb-src entry for the running Debian release (its main archive).
const DEB_SRC: &str = "/etc/apt/sources.list.d/devourer-deb-src.sources";

/// The library built for `arch`: the directory holding libpcap.a, and its version (for the
/// pcap crate's `LIBPCAP_LIBDIR` and `LIBPCAP_VER`).
pub fn static_libpcap(arch: Arch) -> Result<(PathBuf, String)> {
    let root = workspace_root().join("target/static-libpcap");
    let src = source(&root.join("src"))?;
    let version = version_of(&src)?;
    let out = root.join(arch.triple());
    if out.join("libpcap.a").exists() {
        return Ok((out, version));
    }
    let tools = missing_debian(&["flex", "bison", "make", "musl-tools"]);
    apt_install(&tools).context("installing libpcap's build tools")?;
    let build = root.join(format!("build-{}", arch.triple()));
    let _ = std::fs::remove_dir_all(&build);
    std::fs::create_dir_all(&build)?;
    run_cmd(
        Command::new("tar")
            .arg("xzf")
            .arg(&src)
            .arg("--strip-components=1")
            .arg("-C")
            .arg(&build),
    )?;
    let (cc, cflags, host) = match arch {
        Arch::X86_64 => {
            // musl-gcc sees only musl's headers: the kernel's come from linux-libc-dev.
            let kinc = root.join("kernel-headers");
            std::fs::create_dir_all(&kinc)?;
            for (name, target) in [
                ("linux", "/usr/include/linux"),
                ("asm", "/usr/include/x86_64-linux-gnu/asm"),
                ("asm-generic", "/usr/include/asm-generic"),
            ] {
                let link = kinc.join(name);
                if !link.exists() {
                    std::os::unix::fs::symlink(target, &link)?;
                }
            }
            (
                "musl-gcc".to_owned(),
                format!("-O2 -I{}", kinc.display()),
                "x86_64-linux-musl",
            )
        }
        Arch::Aarch64 => {
            crate::setup::zig()?;
            let wrapper = root.join("zig-cc-aarch64");
            std::fs::write(
                &wrapper,
                "#!/bin/sh\nexec python3 -m ziglang cc -target aarch64-linux-musl \"$@\"\n",
            )?;
            set_executable(&wrapper)?;
            (
                wrapper.display().to_string(),
                "-O2".to_owned(),
                "aarch64-linux-musl",
            )
        }
    };
    run_cmd(
        Command::new("./configure")
            .current_dir(&build)
            .env("CC", &cc)
            .env("CFLAGS", &cflags)
            .env("CPPFLAGS", cflags.trim_start_matches("-O2").trim())
            .args([
                &format!("--host={host}"),
                "--disable-shared",
                "--without-libnl",
                "--disable-usb",
                "--disable-netmap",
                "--disable-bluetooth",
                "--disable-dbus",
                "--disable-rdma",
                "--without-dpdk",
                "--without-dag",
                "--without-septel",
                "--without-snf",
                "--without-turbocap",
                "--disable-remote",
            ]),
    )
    .context("configuring libpcap")?;
    run_cmd(
        Command::new("make")
            .current_dir(&build)
            .args(["-j2", "libpcap.a"]),
    )
    .context("building libpcap")?;
    std::fs::create_dir_all(&out)?;
    std::fs::copy(build.join("libpcap.a"), out.join("libpcap.a"))?;
    let _ = std::fs::remove_dir_all(&build);
    Ok((out, version))
}

fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The upstream tarball of Debian's libpcap source package, downloaded into `dir` once.
fn source(dir: &Path) -> Result<PathBuf> {
    let find = || -> Option<PathBuf> {
        std::fs::read_dir(dir)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libpcap_") && n.ends_with(".orig.tar.gz"))
            })
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    std::fs::create_dir_all(dir)?;
    let fetch = || {
        quiet_ok(
            Command::new("apt-get")
                .args(["source", "--download-only", "libpcap"])
                .current_dir(dir),
        )
    };
    if !fetch() {
        add_deb_src()?;
        run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
        if !fetch() {
            bail!("apt-get source libpcap failed, with a deb-src entry in {DEB_SRC}");
        }
    }
    find().context("apt-get source libpcap left no .orig.tar.gz")
}

/// Adds the running Debian release's source archive to apt's sources.
fn add_deb_src() -> Result<()> {
    let release = std::fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    let codename = release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_owned())
        .context("no VERSION_CODENAME in /etc/os-release (not Debian?)")?;
    std::fs::write(
        DEB_SRC,
        format!(
            "Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: {codename}\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        ),
    )
    .with_context(|| format!("writing {DEB_SRC}"))
}

/// `1.10.3` from `libpcap_1.10.3.orig.tar.gz`.
fn version_of(tarball: &Path) -> Result<String> {
    tarball
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("libpcap_")?.strip_suffix(".orig.tar.gz"))
        .map(str::to_owned)
        .context("the libpcap tarball's name has no version")
}
