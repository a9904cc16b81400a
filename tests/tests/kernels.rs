//! The kernel matrix: Debian's own kernels (5.10 of Debian 11, Amazon Linux 2 and Bottlerocket;
//! 6.1 of Debian 12, COS and Amazon Linux 2023; 6.12; and arm64), booted under QEMU with
//! software emulation (`devourer_tests::vm`), each running the agent built on this host. On
//! each: the TC and XDP programs load and attach on a veth pair and count ping, HTTP, iperf3 and
//! UDP traffic equal to tcpdump's capture of it; an nftables rule's drops are on their flow with
//! the kernel's reason (6.1 and newer); TCP round trips under netem match `ss -ti` and
//! retransmits the kernel's `TcpRetransSegs`; the crafted and the live test captures replay
//! to records identical to this host's (the `id` and `agent` fields aside); DNS transactions
//! come through the ring. One test, one line of output, per kernel.

use std::{path::PathBuf, sync::OnceLock, time::Duration};

use devourer_tests::{frames::*, vm::Vm, *};
use pcap_file::DataLink;

/// The crafted and the live test captures, made once, and this host's records of them.
struct Captures {
    files: Vec<PathBuf>,
}

fn captures() -> &'static Captures {
    static C: OnceLock<Captures> = OnceLock::new();
    C.get_or_init(|| {
        // A static is never dropped, so not a TempDir: a directory of this run's under the
        // target dir's tmp (which `cargo clean` empties), not in /tmp.
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("matrix-captures-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("captures dir");
        let dir = |name: &str| dir.join(name);
        // Crafted: flows and DNS lookups, VLAN and QinQ, IPv6 with an extension header, a
        // first and a later fragment, a truncated frame.
        let crafted = dir("crafted.pcap");
        let mut frames = flows_and_lookups(40, 20, None);
        let udp4 = ipv4(
            A4,
            B4,
            17,
            &udp(4000, 53, &dns(9, "tagged.example", None)),
            0,
            0,
        );
        frames.push(eth(&[(0x8100, 100)], 0x0800, &udp4));
        frames.push(eth(&[(0x88a8, 200), (0x8100, 300)], 0x0800, &udp4));
        frames.push(eth6(&ipv6(
            A6,
            B6,
            0,
            &ext(17, 0),
            &udp(5000, 6000, &[1; 40]),
        )));
        frames.push(eth4(&ipv4(
            A4,
            B4,
            17,
            &udp(7000, 7001, &[2; 64]),
            0,
            0x2000,
        )));
        frames.push(eth4(&ipv4(A4, B4, 17, &[3; 40], 0, 0x0004)));
        frames.push(eth4(&ipv4(A4, B4, 6, &tcp(8000, 80, 0x02, &[]), 0, 0))[..30].to_vec());
        write_pcap(&crafted, DataLink::ETHERNET, &frames, 1_700_000_000);
        // Live: real traffic between two namespaces, as tcpdump saw it.
        let live = dir("live.pcap");
        let link = Link::new();
        let dump = tcpdump(&link.a, &link.if_a, &live);
        let servers = start_servers(&link.b);
        link.a.sh(&format!(
            "ping -c 3 -i 0.2 {b} >/dev/null
             curl -sf -o /dev/null http://{b}:8000/
             iperf3 -c {b} -p 5201 -n 1M >/dev/null
             dig +tries=1 +time=1 @{b} live.example >/dev/null || true
             sleep 0.3",
            b = link.ip4_b
        ));
        drop(servers);
        dump.stop(libc::SIGINT, Duration::from_secs(10));
        Captures {
            files: vec![crafted, live],
        }
    })
}

/// A replay's records without the fields that name the machine (`agent`, and the `id` that
/// hashes it), sorted.
fn comparable(jsonl: &[u8]) -> Vec<String> {
    let mut out: Vec<String> = records(jsonl)
        .into_iter()
        .map(|mut r| {
            if let Some(o) = r.as_object_mut() {
                o.remove("id");
                o.remove("agent");
            }
            r.to_string()
        })
        .collect();
    out.sort();
    out
}

/// The newest test binary of `name` beside this one (cargo builds them into one directory).
fn test_binary(name: &str) -> PathBuf {
    let deps = std::env::current_exe()
        .expect("this test's path")
        .parent()
        .expect("deps")
        .to_path_buf();
    std::fs::read_dir(&deps)
        .expect("the test binaries")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.strip_prefix(&format!("{name}-"))
                    .is_some_and(|h| h.chars().all(|c| c.is_ascii_hexdigit()))
            })
        })
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .unwrap_or_else(|| panic!("no {name} test binary in {}", deps.display()))
}

/// The guest's script: the live and DNS tests of this suite, then every capture replayed in
/// both modes into `/vmout`.
fn guest_script(caps: &Captures) -> String {
    let bin = devourer_bin();
    let mut s = format!(
        "export DEVOURER_BIN={bin} PATH=/usr/sbin:/usr/bin:/sbin:/bin RUST_BACKTRACE=1 DEVOURER_LATENCY_TOLERANCE_MS=25 DEVOURER_REQUIRE_DEVICES=1 DEVOURER_START_TIMEOUT_SECS=120\n",
        bin = bin.display()
    );
    // A known gap, in README: on 5.10 the TC program of an IPIP or GRE device sees the packets
    // entering it as no IP (`non_ip`); their inner flows are not counted there.
    s.push_str(
        "case $(uname -r) in 5.10.*) L3_TUNNELS=\"\" ;; *) L3_TUNNELS=\"ipip_inner_traffic_counts_once_and_the_outer_copy_is_marked_ipip gre_inner_traffic_counts_once_and_the_outer_copy_is_marked_gre\" ;; esac\n",
    );
    for (binary, tests) in [
        (
            "live",
            "live_tc_counts_match_tcpdump_and_sigterm_flushes live_xdp_counts_match_tcpdump_and_sigterm_flushes",
        ),
        ("dns", "dns_transactions_match_tshark_in_tc_mode"),
        // Skips itself where the kernel has no drop reasons (5.10: the agent says so).
        (
            "drops",
            "packets_an_nftables_rule_drops_are_on_their_flow_with_the_kernels_reason_and_its_counts",
        ),
        (
            "count_once",
            "a_packet_on_a_vlan_device_and_its_tagged_parent_counts_once_with_its_tag $L3_TUNNELS wireguard_inner_traffic_counts_once_and_the_outer_copy_is_marked_wireguard",
        ),
        // netem delays the client's packets here: round trips against ss, retransmits
        // against TcpRetransSegs.
        (
            "tcp_health",
            "handshake_and_smoothed_rtt_match_ss_retransmits_match_the_mib_and_a_refused_syn_fails",
        ),
    ] {
        s.push_str(&format!(
            "{} --exact --test-threads=1 {tests} > /vmout/test-{binary}.log 2>&1; echo $? > /vmout/test-{binary}.rc\n",
            test_binary(binary).display()
        ));
    }
    for file in &caps.files {
        let stem = file.file_stem().unwrap().to_string_lossy();
        for mode in ["tc", "xdp"] {
            s.push_str(&format!(
                "$DEVOURER_BIN read --mode {mode} --replay-threads 2 {} > /vmout/{stem}-{mode}.jsonl 2> /vmout/{stem}-{mode}.log; echo $? > /vmout/{stem}-{mode}.rc\n",
                file.display()
            ));
        }
    }
    s
}

/// Boots `kernel`, runs the matrix's checks there, and compares with this host.
fn matrix(kernel: &str) {
    let test = format!("kernel {kernel}");
    if !require_root(&test) {
        return;
    }
    let Some(vm) = Vm::named(kernel) else {
        eprintln!(
            "SKIP {test}: the kernel matrix is not prepared (cargo xtask test prepares it; cargo xtask kernels by hand)"
        );
        return;
    };
    let caps = captures();
    let run = vm.run(&guest_script(caps), Duration::from_secs(900));
    let tail = |name: &str| {
        let t = run.file(name);
        let n = t.len().saturating_sub(4000);
        t[n..].to_owned()
    };
    assert!(
        run.ok(),
        "{test}: the guest did not finish:\n{}",
        &run.console[run.console.len().saturating_sub(4000)..]
    );
    for binary in ["live", "dns", "drops", "count_once", "tcp_health"] {
        assert_eq!(
            run.file(&format!("test-{binary}.rc")).trim(),
            "0",
            "{test}: {binary} tests failed in the guest:\n{}",
            tail(&format!("test-{binary}.log"))
        );
    }
    let mut replayed = 0;
    for file in &caps.files {
        let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
        for mode in ["tc", "xdp"] {
            let (status, host_out, stderr) =
                devourer_read(file, &["--mode", mode, "--replay-threads", "2"]);
            assert!(status.success(), "{stderr}");
            let name = format!("{stem}-{mode}");
            assert_eq!(
                run.file(&format!("{name}.rc")).trim(),
                "0",
                "{test}: {}",
                tail(&format!("{name}.log"))
            );
            let guest = std::fs::read(run.out.path(&format!("{name}.jsonl"))).unwrap_or_default();
            let (want, got) = (comparable(&host_out), comparable(&guest));
            assert!(!want.is_empty(), "{name}: no records on the host");
            assert_eq!(
                got, want,
                "{test}: {name} replays differently from this host"
            );
            replayed += want.len();
        }
    }
    println!(
        "{test} ({}, {}): TC and XDP count live traffic as tcpdump does, DNS through the ring, {replayed} replayed records identical to this host's",
        vm.release, vm.arch
    );
}

#[test]
fn kernel_5_10_counts_names_and_replays_as_this_host() {
    matrix("5.10");
}

#[test]
fn kernel_6_1_counts_names_and_replays_as_this_host() {
    matrix("6.1");
}

#[test]
fn kernel_6_12_counts_names_and_replays_as_this_host() {
    matrix("6.12");
}

/// The static aarch64 agent `cargo xtask test` cross-built (`None`: not built, skipped).
fn aarch64_agent() -> Option<PathBuf> {
    std::env::var_os("DEVOURER_STATIC_AARCH64_BIN").map(PathBuf::from)
}

#[test]
fn kernel_arm64_6_1_counts_and_replays_as_this_host() {
    let test = "kernel arm64-6.1";
    if !require_root(test) {
        return;
    }
    let (Some(vm), Some(agent)) = (Vm::named("arm64-6.1"), aarch64_agent()) else {
        eprintln!(
            "SKIP {test}: the kernel matrix or the aarch64 agent is not prepared (cargo xtask test builds both)"
        );
        return;
    };
    let caps = captures();
    // busybox's shell and tools, the static agent from the host's root (under /host).
    let a = format!("/host{}", agent.display());
    let mut script = String::new();
    for file in &caps.files {
        let stem = file.file_stem().unwrap().to_string_lossy();
        for mode in ["tc", "xdp"] {
            script.push_str(&format!(
                "{a} read --mode {mode} /host{} > /vmout/{stem}-{mode}.jsonl 2> /vmout/{stem}-{mode}.log; echo $? > /vmout/{stem}-{mode}.rc\n",
                file.display()
            ));
        }
    }
    // A veth pair, one end in a namespace of its own; ping across it in each mode.
    script.push_str(&format!(
        r#"modprobe veth
ip link add va type veth peer name vb
unshare -n sleep 900 & P=$!
sleep 1
peer=$(ls /sys/class/net | grep -v -e '^lo$' -e '^va$')
ip link set "$peer" netns $P
ip addr add 10.9.0.2/24 dev va; ip link set va up
nsenter -t $P -n ip addr add 10.9.0.1/24 dev "$peer"
nsenter -t $P -n ip link set "$peer" up
for mode in tc xdp; do
  DEVOURER_LOG=info {a} capture -i va --mode $mode --metrics-addr off --probe-addr off --scan-interval 200ms > /vmout/veth-$mode.jsonl 2> /vmout/veth-$mode.log &
  C=$!
  for i in $(seq 1 240); do grep -q capturing /vmout/veth-$mode.log && break; sleep 0.5; done
  nsenter -t $P -n ping -c 5 -i 0.2 10.9.0.2 > /vmout/ping-$mode.txt
  sleep 1; kill $C; wait $C; echo $? > /vmout/veth-$mode.rc
done
"#
    ));
    let run = vm.run(&script, Duration::from_secs(900));
    assert!(
        run.ok(),
        "{test}: the guest did not finish:\n{}",
        &run.console[run.console.len().saturating_sub(4000)..]
    );
    let mut replayed = 0;
    for file in &caps.files {
        let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
        for mode in ["tc", "xdp"] {
            let (status, host_out, stderr) = devourer_read(file, &["--mode", mode]);
            assert!(status.success(), "{stderr}");
            let name = format!("{stem}-{mode}");
            assert_eq!(
                run.file(&format!("{name}.rc")).trim(),
                "0",
                "{test}: {}",
                run.file(&format!("{name}.log"))
            );
            let guest = std::fs::read(run.out.path(&format!("{name}.jsonl"))).unwrap_or_default();
            let (want, got) = (comparable(&host_out), comparable(&guest));
            assert_eq!(
                got, want,
                "{test}: {name} replays differently from this host"
            );
            replayed += want.len();
        }
    }
    for mode in ["tc", "xdp"] {
        let log = run.file(&format!("veth-{mode}.log"));
        assert_eq!(
            run.file(&format!("veth-{mode}.rc")).trim(),
            "0",
            "{test} {mode}: {log}"
        );
        // ping's own count is the oracle: 5 requests, 5 replies of 84 IP bytes each.
        let ping = run.file(&format!("ping-{mode}.txt"));
        assert!(
            ping.contains("5 packets transmitted, 5 packets received"),
            "{ping}"
        );
        let recs = records(
            &std::fs::read(run.out.path(&format!("veth-{mode}.jsonl"))).unwrap_or_default(),
        );
        let icmp: Vec<_> = recs.iter().filter(|r| r["protocol"] == "icmp").collect();
        assert_eq!(icmp.len(), 1, "{test} {mode}: {recs:?}\n{log}");
        let r = icmp[0];
        assert_eq!(
            (
                r["src_addr"].as_str(),
                r["src_packets"].as_u64(),
                r["dst_packets"].as_u64()
            ),
            (Some("10.9.0.1"), Some(5), Some(5)),
            "{test} {mode}: {r}"
        );
        assert_eq!(
            (r["src_bytes"].as_u64(), r["dst_bytes"].as_u64()),
            (Some(420), Some(420))
        );
    }
    println!(
        "{test} ({}, {}): the static aarch64 agent counts a veth's traffic in TC and XDP mode as ping does, {replayed} replayed records identical to this host's",
        vm.release, vm.arch
    );
}
