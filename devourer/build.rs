//! Builds devourer-ebpf for the bpf target with aya-build, so that `cargo build` alone yields an
//! agent with its kernel program embedded (see `src/kernel/object.rs`); with the
//! `bench-programs` feature, the benchmarks' object too.
use std::{fs, path::Path};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    let root = Path::new(&manifest_dir).parent().expect("workspace root");
    let ebpf_dir = root.join("devourer-ebpf");
    let common_dir = root.join("devourer-common");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    let toolchain_file = ebpf_dir.join("rust-toolchain.toml");
    println!("cargo:rerun-if-changed={}", toolchain_file.display());
    let toolchain = fs::read_to_string(&toolchain_file)
        .map_err(|e| format!("reading {}: {e}", toolchain_file.display()))?;
    let channel = toolchain
        .lines()
        .find_map(|l| l.trim().strip_prefix("channel"))
        .and_then(|rest| rest.split('"').nth(1))
        .ok_or_else(|| format!("no channel in {}", toolchain_file.display()))?
        .to_owned();
    let ebpf_dir = ebpf_dir.to_str().ok_or("non-UTF-8 path")?;
    // The benchmarks build the bench object too (the same programs plus baselines).
    let bench = std::env::var_os("CARGO_FEATURE_BENCH_PROGRAMS").is_some();
    let features: &[&str] = if bench { &["bench"] } else { &[] };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "devourer-ebpf",
            root_dir: ebpf_dir,
            features,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&channel),
    )
    .map_err(|e| {
        format!(
            "building the eBPF program with {channel} failed: {e:#}\n\
             hint: run `cargo xtask setup` (nightly toolchain, rust-src, bpf-linker)"
        )
    })?;
    Ok(())
}
