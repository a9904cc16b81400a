//! The kernel matrix's virtual machines: Debian's kernels, as `cargo xtask test` prepares them
//! (`xtask/src/vm.rs`, under `DEVOURER_VM_DIR`), booted under QEMU with software emulation
//! (`/dev/kvm` here is a nested kvm-pvm that cannot run them). An x86_64 guest sees the host's
//! root read-only under a tmpfs overlay, so the host's tools, test binaries and agent run in
//! it as they are; an arm64 guest has busybox and what the host shares. Each run gets an
//! output directory of its own, shared read-write at `/vmout`, where its script lives.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::TempDir;

/// A prepared kernel.
pub struct Vm {
    pub name: String,
    pub dir: PathBuf,
    /// `amd64` or `arm64`.
    pub arch: String,
    pub release: String,
}

/// What one boot produced.
pub struct Run {
    /// The console (the kernel's messages and the script's output).
    pub console: String,
    /// The script's exit status, when it got to the end.
    pub exit: Option<i32>,
    /// The shared output directory, for files the script wrote.
    pub out: TempDir,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.exit == Some(0)
    }

    pub fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.out.path(name)).unwrap_or_default()
    }
}

/// Where `cargo xtask test` put the kernels (`None`: not prepared, the matrix is skipped).
pub fn matrix_dir() -> Option<PathBuf> {
    std::env::var_os("DEVOURER_VM_DIR").map(PathBuf::from)
}

impl Vm {
    /// Kernel `name` of the prepared matrix.
    pub fn named(name: &str) -> Option<Self> {
        let dir = matrix_dir()?.join(name);
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
        Some(Self {
            name: name.to_owned(),
            arch: read("arch")?,
            release: read("release")?,
            dir,
        })
    }

    /// The kernel's module tree as the guest sees it (the host's path: an x86_64 guest has
    /// the host's root; an arm64 guest sees it under `/host`).
    fn modules(&self) -> String {
        let tree = self.dir.join("root/lib/modules").join(&self.release);
        if self.arch == "amd64" {
            tree.display().to_string()
        } else {
            format!("/host{}", tree.display())
        }
    }

    /// Boots the kernel and runs `script` (sh) in the guest, for at most `limit`.
    pub fn run(&self, script: &str, limit: Duration) -> Run {
        let out = TempDir::new(&format!("vm-{}", self.name));
        let modules = self.modules();
        let body = format!(
            "set -u\nln -sfn {modules} /lib/modules/{release} 2>/dev/null\ncd /vmout\n{script}\n",
            release = self.release
        );
        std::fs::write(out.path("run.sh"), body).expect("the guest's script");
        let share = |path: &Path, tag: &str, ro: bool| {
            format!(
                "local,path={},mount_tag={tag},security_model=none,multidevs=remap{}",
                path.display(),
                if ro { ",readonly=on" } else { "" }
            )
        };
        let mut qemu = if self.arch == "amd64" {
            let mut c = Command::new("qemu-system-x86_64");
            c.args(["-machine", "q35", "-cpu", "max"])
                .args(["-append", "console=ttyS0 panic=-1 quiet loglevel=3"]);
            c
        } else {
            let mut c = Command::new("qemu-system-aarch64");
            c.args(["-machine", "virt", "-cpu", "max"])
                .args(["-append", "console=ttyAMA0 panic=-1 quiet loglevel=3"]);
            c
        };
        qemu.args(["-accel", "tcg,thread=multi", "-smp", "2", "-m", "2048"])
            .args([
                "-nographic",
                "-no-reboot",
                "-nodefaults",
                "-serial",
                "stdio",
            ])
            .arg("-kernel")
            .arg(self.dir.join("kernel"))
            .arg("-initrd")
            .arg(self.dir.join("initrd"))
            .arg("-virtfs")
            .arg(share(Path::new("/"), "hostroot", true))
            .arg("-virtfs")
            .arg(share(&out.0, "vmout", false))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = qemu
            .spawn()
            .expect("qemu (Debian qemu-system-x86, qemu-system-arm)");
        let stdout = child.stdout.take().expect("piped");
        let reader = std::thread::spawn(move || {
            use std::io::Read;
            let mut s = String::new();
            let _ = std::io::BufReader::new(stdout).read_to_string(&mut s);
            s
        });
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if child.try_wait().ok().flatten().is_none() {
            let _ = child.kill();
        }
        let _ = child.wait();
        let console = reader.join().unwrap_or_default();
        let exit = console
            .lines()
            .find_map(|l| l.trim().strip_prefix("DEVOURER-VM: exit "))
            .and_then(|n| n.trim().parse().ok());
        Run { console, exit, out }
    }
}
