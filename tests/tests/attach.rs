//! Attachment lifecycle: nothing stale after a crash (TCX links die with the process, netlink
//! filters left behind are removed at the next start), `--all-interfaces`, and a clear message
//! when capabilities are missing.

use std::{path::Path, process::Command, time::Duration};

use devourer_tests::*;

fn start(ns: &Netns, args: &[&str], log: &Path) -> Bg {
    start_capture(ns, args, None, log)
}

fn loaded_devourer_programs() -> usize {
    let out = run(Command::new("bpftool").args(["prog", "show"]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("name devourer_"))
        .count()
}

fn tc_filters(ns: &Netns, ifc: &str) -> String {
    let out = ns.sh(&format!(
        "tc filter show dev {ifc} ingress; tc filter show dev {ifc} egress"
    ));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_killed_agent_leaves_no_tcx_program_behind() {
    if !require_root("a_killed_agent_leaves_no_tcx_program_behind") {
        return;
    }
    let tmp = TempDir::new("tcx");
    let link = Link::new();
    let before = loaded_devourer_programs();
    let agent = start(&link.a, &["-i", &link.if_a], &tmp.path("log"));
    assert!(loaded_devourer_programs() > before);
    agent.signal(libc::SIGKILL);
    drop(agent);
    assert!(
        wait_for(Duration::from_secs(10), || loaded_devourer_programs()
            == before),
        "programs still loaded after kill -9: {}",
        loaded_devourer_programs()
    );
    assert!(!tc_filters(&link.a, &link.if_a).contains("devourer"));
}

#[test]
fn netlink_filters_left_by_a_crash_are_removed_at_the_next_start() {
    if !require_root("netlink_filters_left_by_a_crash_are_removed_at_the_next_start") {
        return;
    }
    let tmp = TempDir::new("netlink");
    let link = Link::new();
    let first = start(
        &link.a,
        &["-i", &link.if_a, "--tc-netlink"],
        &tmp.path("log1"),
    );
    first.signal(libc::SIGKILL);
    drop(first);
    let left = tc_filters(&link.a, &link.if_a);
    assert_eq!(left.matches("devourer_tc_ingress").count(), 1, "{left}");
    assert_eq!(left.matches("devourer_tc_egress").count(), 1, "{left}");

    let log2 = tmp.path("log2");
    let second = start(&link.a, &["-i", &link.if_a, "--tc-netlink"], &log2);
    let now = tc_filters(&link.a, &link.if_a);
    assert_eq!(
        now.matches("devourer_tc_ingress").count(),
        1,
        "one filter, not two: {now}"
    );
    assert_eq!(now.matches("devourer_tc_egress").count(), 1, "{now}");
    assert!(
        std::fs::read_to_string(&log2)
            .unwrap()
            .contains("removed a filter left by an earlier run")
    );
    // The new filters count: ping through them.
    link.a
        .sh(&format!("ping -c 2 -i 0.2 {} >/dev/null", link.ip4_b));
    let out = second.stop(libc::SIGTERM, Duration::from_secs(20));
    assert!(out.status.success());
    assert!(
        !tc_filters(&link.a, &link.if_a).contains("devourer"),
        "clean after SIGTERM"
    );
}

#[test]
fn all_interfaces_means_every_up_interface_except_loopback() {
    if !require_root("all_interfaces_means_every_up_interface_except_loopback") {
        return;
    }
    let tmp = TempDir::new("all");
    let link = Link::new();
    link.a.sh("ip link add up0 type veth peer name up1
         ip link set up0 up; ip link set up1 up
         ip link add down0 type veth peer name down1");
    // The interfaces one run attached, sorted.
    let attached_with = |name: &str, args: &[&str]| {
        let log = tmp.path(name);
        let agent = start(&link.a, args, &log);
        let out = agent.stop(libc::SIGTERM, Duration::from_secs(20));
        assert!(out.status.success());
        let text = std::fs::read_to_string(&log).unwrap();
        let mut attached: Vec<String> = text
            .lines()
            .filter(|l| l.contains(" attached "))
            .filter_map(|l| l.split("interface=").nth(1)?.split_whitespace().next())
            .map(str::to_owned)
            .collect();
        attached.sort_unstable();
        attached
    };
    let mut expect = vec![link.if_a.clone(), "up0".into(), "up1".into()];
    expect.sort_unstable();
    assert_eq!(attached_with("all", &["--all-interfaces"]), expect);
    // Patterns choose among them (a CNI's bridge or tunnel left out, for instance).
    assert_eq!(
        attached_with(
            "some",
            &[
                "--all-interfaces",
                "--interface-include",
                "up*,va*",
                "--interface-exclude",
                "up1"
            ]
        ),
        ["up0".to_owned(), link.if_a.clone()]
    );
    let o = link
        .a
        .cmd(devourer_bin())
        .args(["capture", "-i", "up0", "--interface-exclude", "up1"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("choose among --all-interfaces"));
}

#[test]
fn missing_capabilities_are_named() {
    if !require_root("missing_capabilities_are_named") {
        return;
    }
    let tmp = TempDir::new("caps");
    let pcap = tmp.path("one.pcap");
    frames::write_pcap(
        &pcap,
        pcap_file::DataLink::ETHERNET,
        &[frames::eth4(&frames::ipv4(
            frames::A4,
            frames::B4,
            17,
            &frames::udp(1, 2, &[]),
            0,
            0,
        ))],
        1_700_000_000,
    );
    let cmd = format!("{} read {}", devourer_bin().display(), pcap.display());
    let out = Command::new("capsh")
        .args([
            "--drop=cap_bpf,cap_perfmon,cap_net_admin,cap_sys_admin",
            "--",
            "-c",
            &cmd,
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON"),
        "{err}"
    );
}

/// A program that drops every packet arriving on `iface` in `ns`, at the head or the tail of
/// its TCX ingress chain; gone when the returned process is.
fn drop_all(ns: &Netns, iface: &str, order: &str) -> Bg {
    let mut cmd = ns.cmd(env!("CARGO_BIN_EXE_tcx_drop"));
    cmd.args([iface, "ingress", order])
        .stdout(std::process::Stdio::piped());
    let mut bg = Bg::spawn(cmd, "tcx_drop");
    let mut line = String::new();
    let out = bg.child.as_mut().unwrap().stdout.take().unwrap();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).unwrap();
    assert_eq!(line.trim(), "attached");
    bg
}

/// ICMP echo requests from A to B in the agent's records (B's side).
fn requests_counted(out: &Path, link: &Link) -> u64 {
    records(&std::fs::read(out).unwrap())
        .iter()
        .filter(|r| r["type"] == "flow" && r["protocol"] == "icmp")
        .filter(|r| r["src_addr"] == link.ip4_a.as_str())
        .map(|r| r["src_packets"].as_u64().unwrap())
        .sum()
}

#[test]
fn the_agent_heads_the_tcx_chain_and_hands_every_packet_on() {
    if !require_root("the_agent_heads_the_tcx_chain_and_hands_every_packet_on") {
        return;
    }
    let tmp = TempDir::new("tcx-order");
    let link = Link::new();
    let ping = || {
        let o = link
            .a
            .cmd("ping")
            .args(["-c", "4", "-i", "0.1", "-W", "1", &link.ip4_b])
            .output()
            .unwrap();
        o.status.success()
    };
    let agent_on_b = |name: &str| {
        let out = tmp.path(&format!("{name}.jsonl"));
        let agent = start_capture(
            &link.b,
            &["-i", &link.if_b, "--metrics-addr", "off"],
            Some(&out),
            &tmp.path(&format!("{name}.log")),
        );
        (agent, out)
    };

    // A program already there that drops everything cannot hide the packets from devourer:
    // it attaches in front of it.
    let dropper = drop_all(&link.b, &link.if_b, "first");
    let (agent, out) = agent_on_b("before");
    assert!(!ping(), "the drop program drops");
    agent.stop(libc::SIGTERM, Duration::from_secs(20));
    assert_eq!(
        requests_counted(&out, &link),
        4,
        "counted although dropped after us"
    );
    drop(dropper);

    // One attached after devourer still runs: devourer hands every packet on (TCX_NEXT).
    let (agent, out) = agent_on_b("after");
    assert!(ping(), "nothing drops yet");
    let dropper = drop_all(&link.b, &link.if_b, "last");
    assert!(!ping(), "the program after devourer still drops");
    drop(dropper);
    agent.stop(libc::SIGTERM, Duration::from_secs(20));
    assert_eq!(requests_counted(&out, &link), 8);
}
