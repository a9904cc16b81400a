//! The kernel matrix's ingredients: Debian's own kernels, found by package name through each
//! suite's metapackage with apt on a list directory of its own (the host's apt configuration is
//! not touched), unpacked with `dpkg -x`; a bootable image of each (x86's uncompressed vmlinux,
//! booted through its PVH entry: decompressing a bzImage under software emulation is slow);
//! and an initramfs per kernel of busybox (static, the guest's architecture) with the modules
//! that mount the host's root over 9p. `tests/src/vm.rs` boots them.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::run_cmd;

/// One kernel of the matrix.
pub struct Kernel {
    /// The name tests and their output use (`5.10`, `arm64-6.1`).
    pub name: &'static str,
    /// The Debian suite whose metapackage picks it.
    pub suite: &'static str,
    /// Debian's architecture.
    pub arch: &'static str,
}

/// What the matrix boots: the fleet's oldest (Amazon Linux 2, Bottlerocket, Debian 11), its
/// most common (Debian 12, COS, Amazon Linux 2023), a recent one, and arm64.
pub const MATRIX: [Kernel; 4] = [
    Kernel {
        name: "5.10",
        suite: "bullseye",
        arch: "amd64",
    },
    Kernel {
        name: "6.1",
        suite: "bookworm",
        arch: "amd64",
    },
    Kernel {
        name: "6.12",
        suite: "bookworm-backports",
        arch: "amd64",
    },
    Kernel {
        name: "arm64-6.1",
        suite: "bookworm",
        arch: "arm64",
    },
];

/// Modules the initramfs loads, in order, to mount the host's root (those built in are
/// skipped); more come from the host-side tree once it is mounted.
const BOOT_MODULES: &[&str] = &[
    "virtio",
    "virtio_ring",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_mmio",
    "netfs",
    "fscache",
    "9pnet",
    "9pnet_virtio",
    "9p",
    "overlay",
];

/// apt with its own sources and state under `dir`.
fn apt(dir: &Path, tool: &str) -> Command {
    let mut c = Command::new(tool);
    c.arg("-o")
        .arg(format!(
            "Dir::Etc::sourcelist={}",
            dir.join("sources.list").display()
        ))
        .args(["-o", "Dir::Etc::sourceparts=/nonexistent"])
        .arg("-o")
        .arg(format!("Dir::State::Lists={}", dir.join("lists").display()))
        .arg("-o")
        .arg(format!("Dir::Cache={}", dir.join("cache").display()))
        .args([
            "-o",
            "APT::Architectures::=amd64",
            "-o",
            "APT::Architectures::=arm64",
        ])
        .args(["-o", "Debug::NoLocking=1"]);
    c
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The package a suite's metapackage (`linux-image-ARCH`) depends on: the kernel itself.
fn image_package(dir: &Path, k: &Kernel) -> Result<String> {
    let meta = if k.arch == "amd64" {
        "linux-image-amd64".to_owned()
    } else {
        format!("linux-image-{0}:{0}", k.arch)
    };
    // The metapackage's version in that suite (madison: "pkg | version | url suite/main arch").
    let madison = output(apt(dir, "apt-cache").args(["madison", &meta]))?;
    let version = madison
        .lines()
        .find(|l| l.contains(&format!(" {}/main ", k.suite)))
        .and_then(|l| l.split('|').nth(1))
        .map(str::trim)
        .with_context(|| format!("no {meta} in {}: {madison}", k.suite))?;
    let deps = output(apt(dir, "apt-cache").args(["depends", &format!("{meta}={version}")]))?;
    deps.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(|p| p.split(':').next().unwrap_or(p).to_owned())
        .find(|p| p.starts_with("linux-image-"))
        .with_context(|| format!("{meta}={version} names no kernel: {deps}"))
}

/// Downloads `package` (for `arch`) into `into`, returning the .deb's path (one downloaded
/// before is kept).
fn download(dir: &Path, package: &str, arch: &str, into: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(into)?;
    let spec = if arch == "amd64" {
        package.to_owned()
    } else {
        format!("{package}:{arch}")
    };
    let find = || {
        std::fs::read_dir(into)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.starts_with(&format!("{package}_")) && n.ends_with(&format!("_{arch}.deb"))
                })
            })
    };
    if let Some(deb) = find() {
        return Ok(deb);
    }
    run_cmd(
        apt(dir, "apt-get")
            .current_dir(into)
            .args(["download", "-q", &spec]),
    )?;
    find().with_context(|| format!("apt-get download {spec} left no .deb"))
}

/// What a prepared kernel was prepared with: another initramfs means preparing it again.
fn recipe() -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (INIT, INIT_FOREIGN, BOOT_MODULES).hash(&mut h);
    format!("{:016x}", h.finish())
}

/// The uncompressed kernel inside an x86 bzImage (xz or zstd, as Debian builds them): an ELF
/// with a PVH entry QEMU boots directly.
fn vmlinux(bzimage: &Path, out: &Path) -> Result<()> {
    let data = std::fs::read(bzimage)?;
    let find = |magic: &[u8]| data.windows(magic.len()).position(|w| w == magic);
    let (at, tool) = if let Some(at) = find(b"\xfd7zXZ\x00") {
        (at, ["xz", "-dc"])
    } else if let Some(at) = find(b"\x28\xb5\x2f\xfd") {
        (at, ["zstd", "-dcq"])
    } else {
        bail!("{}: no xz or zstd payload", bzimage.display());
    };
    let mut child = Command::new(tool[0])
        .arg(tool[1])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", tool[0]))?;
    let mut stdin = child.stdin.take().expect("piped");
    let payload = data[at..].to_vec();
    let writer = std::thread::spawn(move || {
        // The payload is followed by trailing bytes: the decompressor stops at its end.
        let _ = stdin.write_all(&payload);
    });
    let out_bytes = child.wait_with_output()?.stdout;
    let _ = writer.join();
    if !out_bytes.starts_with(b"\x7fELF") {
        bail!("{}: the payload is not an ELF kernel", bzimage.display());
    }
    std::fs::write(out, out_bytes)?;
    Ok(())
}

/// A newc cpio archive (what the kernel unpacks as an initramfs).
struct Cpio(Vec<u8>);

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        let ino = self.0.len() as u32;
        let header = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.0.extend_from_slice(header.as_bytes());
        self.0.extend_from_slice(name.as_bytes());
        self.0.push(0);
        self.pad();
        self.0.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[]);
    }

    fn file(&mut self, name: &str, data: &[u8], exec: bool) {
        self.entry(name, if exec { 0o100755 } else { 0o100644 }, data);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.0
    }
}

/// A module's file in `tree` (`lib/modules/RELEASE`), decompressed when Debian shipped it
/// compressed; `None` when the kernel has it built in.
fn module(tree: &Path, name: &str) -> Result<Option<Vec<u8>>> {
    let found = walk(&tree.join("kernel")).into_iter().find(|p| {
        let f = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        f == format!("{name}.ko") || f == format!("{name}.ko.xz") || f == format!("{name}.ko.zst")
    });
    let Some(path) = found else {
        return Ok(None);
    };
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    Ok(Some(match ext {
        "xz" => output_bytes(Command::new("xz").arg("-dc").arg(&path))?,
        "zst" => output_bytes(Command::new("zstd").arg("-dcq").arg(&path))?,
        _ => std::fs::read(&path)?,
    }))
}

fn output_bytes(cmd: &mut Command) -> Result<Vec<u8>> {
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("{cmd:?} failed");
    }
    Ok(out.stdout)
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The guest's first process: mounts the host's root (read-only, under a tmpfs overlay) and
/// the shared output directory, then runs `/vmout/run.sh` in it and powers off.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod /modules/$m.ko 2>/dev/null; done
mkdir -p /lower /upper /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /lower || echo "DEVOURER-VM: no host root"
mount -t tmpfs -o size=1g tmpfs /upper
mkdir -p /upper/u /upper/w
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w /newroot
mkdir -p /newroot/vmout
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 vmout /newroot/vmout
mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
mount -t devtmpfs dev /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm
mount -t tmpfs tmpfs /newroot/run
mkdir -p /newroot/run/netns
mount -t bpf bpf /newroot/sys/fs/bpf
mount -t tracefs tracefs /newroot/sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /newroot/sys/kernel/debug 2>/dev/null
mount -t cgroup2 cgroup2 /newroot/sys/fs/cgroup 2>/dev/null
mkdir -p /newroot/lib/modules
cat > /newroot/run/stage2.sh <<'STAGE2'
ulimit -l unlimited
echo "DEVOURER-VM: booted $(uname -r) $(uname -m)"
sh /vmout/run.sh
echo "DEVOURER-VM: exit $?"
sync
echo 1 > /proc/sys/kernel/sysrq
echo o > /proc/sysrq-trigger
sleep 30
STAGE2
# The host's root becomes the guest's: the kernel's helpers (modprobe) run there too.
exec switch_root /newroot /bin/sh /run/stage2.sh
"#;

/// The guest's first process where the host's binaries cannot run (another architecture):
/// busybox and the files under the shared output directory only.
const INIT_FOREIGN: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod /modules/$m.ko 2>/dev/null; done
mkdir -p /vmout /tmp /run /host
mount -t tmpfs tmpfs /tmp
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 vmout /vmout
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000 hostroot /host
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mkdir -p /lib/modules
# The kernel loads modules on demand (a qdisc, a device type) through this.
echo /bin/modprobe > /proc/sys/kernel/modprobe
ulimit -l unlimited
echo "DEVOURER-VM: booted $(uname -r) $(uname -m)"
sh /vmout/run.sh
echo "DEVOURER-VM: exit $?"
sync
poweroff -f
"#;

/// Downloads, unpacks and prepares every kernel of the matrix under `dir` (kept between runs:
/// a kernel already there is not fetched again). Returns the kernels' directories.
pub fn prepare(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir.join("lists/partial"))?;
    std::fs::create_dir_all(dir.join("cache/archives/partial"))?;
    let sources: String = ["bullseye", "bookworm", "bookworm-backports"]
        .iter()
        .map(|s| {
            format!(
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg arch=amd64,arm64] http://deb.debian.org/debian {s} main\n"
            )
        })
        .collect();
    std::fs::write(dir.join("sources.list"), sources)?;
    let mut updated = false;
    let mut out = Vec::new();
    for k in &MATRIX {
        let kdir = dir.join(k.name);
        if std::fs::read_to_string(kdir.join("ready")).is_ok_and(|r| r == recipe()) {
            out.push(kdir);
            continue;
        }
        let listed = std::fs::read_dir(dir.join("lists"))?
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().contains("_Packages"));
        if !updated && !listed {
            run_cmd(apt(dir, "apt-get").args(["update", "-q"]))?;
            updated = true;
        }
        let _ = std::fs::remove_dir_all(&kdir);
        let debs = dir.join("debs");
        let package = image_package(dir, k)?;
        eprintln!("xtask: kernel matrix {}: {package} ({})", k.name, k.suite);
        let deb = download(dir, &package, k.arch, &debs)?;
        let root = kdir.join("root");
        std::fs::create_dir_all(&root)?;
        run_cmd(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))?;
        let release = std::fs::read_dir(root.join("lib/modules"))?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .next()
            .context("no lib/modules in the kernel package")?;
        let tree = root.join("lib/modules").join(&release);
        run_cmd(Command::new("depmod").arg("-b").arg(&root).arg(&release))?;
        let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
        if k.arch == "amd64" {
            vmlinux(&vmlinuz, &kdir.join("kernel"))?;
        } else {
            std::fs::copy(&vmlinuz, kdir.join("kernel"))?;
        }
        let bb_deb = download(dir, "busybox-static", k.arch, &debs)?;
        let bb_root = dir.join(format!("busybox-{}", k.arch));
        std::fs::create_dir_all(&bb_root)?;
        run_cmd(Command::new("dpkg").arg("-x").arg(&bb_deb).arg(&bb_root))?;
        let busybox = std::fs::read(bb_root.join("bin/busybox"))?;
        let mut cpio = Cpio(Vec::new());
        for d in [
            "bin", "sbin", "proc", "sys", "dev", "modules", "usr", "usr/bin", "usr/sbin",
        ] {
            cpio.dir(d);
        }
        cpio.file("bin/busybox", &busybox, true);
        let foreign = k.arch != "amd64";
        cpio.file(
            "init",
            if foreign { INIT_FOREIGN } else { INIT }.as_bytes(),
            true,
        );
        let mut order = String::new();
        for m in BOOT_MODULES {
            if let Some(bytes) = module(&tree, m)? {
                cpio.file(&format!("modules/{m}.ko"), &bytes, false);
                order.push_str(m);
                order.push('\n');
            }
        }
        cpio.file("modules.order", order.as_bytes(), false);
        std::fs::write(kdir.join("initrd"), cpio.finish())?;
        std::fs::write(kdir.join("release"), &release)?;
        std::fs::write(kdir.join("arch"), k.arch)?;
        std::fs::write(kdir.join("ready"), recipe())?;
        out.push(kdir);
    }
    Ok(out)
}
