//! Offline replay (`devourer read FILE`): every recorded frame goes through the same kernel
//! program with BPF_PROG_TEST_RUN, the file's timestamps as its clock, then through the same
//! flow table and sinks as live capture. Timeouts fire on the file's clock. A second thread
//! reads and frames the file ([`reader`]), so the replaying thread only feeds the program.

mod reader;

use std::{io::IsTerminal, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use devourer_common::flow::XdpReplayMeta;

use crate::{
    bpf_sys,
    config::ReadArgs,
    dns::decode_event,
    flow::Status,
    loader::{self, Mode, PROG_TC_INGRESS, PROG_XDP},
    local::LocalAddrs,
    pcap::{CaptureFile, FrameSkip},
    pipeline::{Pipeline, report_kernel},
    record::Clock,
    sink::JsonLinesSink,
};

/// Frames longer than this are replayed cut to this length: BPF_PROG_TEST_RUN refuses frames
/// that do not fit in a page with its head- and tailroom (about 3.5 KiB for XDP). Bytes come
/// from the IP length fields, so cutting changes no count.
pub const MAX_REPLAY_FRAME: usize = 3072;

/// DNS and HTTP records are handed to the sink in batches of about this many.
const DNS_BATCH: usize = 1024;

/// What happened to the file's packets before the kernel program saw them.
#[derive(Debug, Default)]
struct ReplayStats {
    packets: u64,
    fed: u64,
    short: u64,
    unsupported_link: u64,
    cut: u64,
    run_errors: u64,
}

/// Record interface names: the pcapng `if_name`, else `pcap`. Interface `i` of the file is
/// replayed as ifindex `i + 1`.
fn sync_names(pipeline: &mut Pipeline, interfaces: &[Option<String>]) {
    for (i, name) in interfaces.iter().enumerate().skip(pipeline.names.len()) {
        let name = name.clone().unwrap_or_else(|| "pcap".into());
        pipeline.names.insert(i as u32 + 1, name);
    }
}

pub fn run(args: ReadArgs) -> Result<ExitCode> {
    let flow = &args.flow;
    let cap = CaptureFile::open(&args.file)?;
    let file_len = cap.file_len;
    crate::caps::check(false).context("checking capabilities")?;
    let mut opts = args.dns.load_options(true, flow);
    args.http.apply(&mut opts);
    let mut loaded = loader::load(&opts).context("loading the kernel program")?;
    let prog = loaded.prog_fd(match flow.mode {
        Mode::Tc => PROG_TC_INGRESS,
        Mode::Xdp => PROG_XDP,
    })?;
    let sink = match flow.target() {
        Some(t) => Some(
            JsonLinesSink::start(&t, 64, true, Duration::from_secs(1))
                .with_context(|| format!("opening output {t:?}"))?,
        ),
        None => None,
    };
    let mut pipeline = Pipeline::new(flow.table_config(), sink, flow.agent(), Clock::default());
    pipeline.bq = crate::capture::start_bq(&args.bq)?;
    pipeline.default_name = "pcap".into();
    // Offline, only --local-net says which addresses were the capturing host's.
    let local = LocalAddrs::new(args.dns.local_nets.clone());
    let (http, http_log) = args
        .http
        .build(local, args.dns.log_tz)
        .context("opening the HTTP log directory")?;
    pipeline.http = http;
    pipeline.http_log = http_log;
    let (dns, dns_log) = args
        .dns
        .build(LocalAddrs::new(args.dns.local_nets.clone()))
        .context("opening the DNS log directory")?;
    pipeline.dns = dns;
    pipeline.dns_log = dns_log;

    let show_progress = args.progress || (!args.no_progress && std::io::stderr().is_terminal());
    let bar = show_progress.then(|| {
        let bar = indicatif::ProgressBar::new(file_len);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {bytes}/{total_bytes} [{bar:30}] {bytes_per_sec} eta {eta} {msg}",
            )
            .expect("progress template")
            .progress_chars("=> "),
        );
        bar
    });

    let interval = flow.scan_interval.as_nanos() as u64;
    let mut next_scan: Option<u64> = None;
    let mut last_ts: Option<u64> = None;
    let mut input = Vec::with_capacity(MAX_REPLAY_FRAME + size_of::<XdpReplayMeta>());
    let mut st = ReplayStats::default();
    let mut warned_link = false;
    let mut interfaces: Vec<Option<String>> = Vec::new();
    let reader = reader::Reader::start(cap).context("starting the capture reader thread")?;
    let outcome = 'file: loop {
        let Ok(mut batch) = reader.batches.recv() else {
            anyhow::bail!("the capture reader thread stopped before the end of the file");
        };
        interfaces.clone_from(&batch.interfaces);
        sync_names(&mut pipeline, &interfaces);
        for pkt in &batch.packets {
            st.packets += 1;
            if let Some(bar) = &bar
                && st.packets % 4096 == 0
            {
                bar.set_position(batch.position);
                bar.set_message(format!("{} packets", st.packets));
            }
            // Scans at interval boundaries of the file's clock, before the packet that crosses
            // one.
            let due = *next_scan.get_or_insert(pkt.ts_ns.saturating_add(interval));
            if pkt.ts_ns >= due {
                let boundary = due + (pkt.ts_ns - due) / interval * interval;
                if !pipeline.scan(&mut loaded.flows, boundary, false)? {
                    anyhow::bail!("output closed");
                }
                next_scan = Some(boundary + interval);
            }
            last_ts = Some(last_ts.map_or(pkt.ts_ns, |t: u64| t.max(pkt.ts_ns)));

            match pkt.skip {
                None => {}
                Some((FrameSkip::Short, _)) => {
                    st.short += 1;
                    continue;
                }
                Some((FrameSkip::UnsupportedLink, linktype)) => {
                    if !warned_link {
                        tracing::warn!(
                            ?linktype,
                            "skipping packets of an unsupported link type (Ethernet, raw IP, Linux SLL/SLL2 and BSD loopback are replayed)"
                        );
                        warned_link = true;
                    }
                    st.unsupported_link += 1;
                    continue;
                }
            }
            st.cut += u64::from(pkt.cut);
            let frame = batch.frame(pkt);
            // Interface ids start at 1 in keys (0 would collide with "unset").
            let ifindex = pkt.iface as u32 + 1;
            let res = match flow.mode {
                Mode::Tc => bpf_sys::test_run(prog, frame, &bpf_sys::skb_ctx(pkt.ts_ns, ifindex)),
                Mode::Xdp => {
                    let meta = XdpReplayMeta {
                        ts_ns: pkt.ts_ns,
                        ifindex,
                        _pad: 0,
                    };
                    input.clear();
                    input.extend_from_slice(&meta.to_ne_bytes());
                    input.extend_from_slice(frame);
                    let ctx =
                        bpf_sys::xdp_ctx(size_of::<XdpReplayMeta>() as u32, input.len() as u32);
                    bpf_sys::test_run(prog, &input, &ctx)
                }
            };
            match res {
                Ok(_) => {
                    st.fed += 1;
                    while let Some(item) = loaded.dns.next() {
                        if let Some((h, payload)) = decode_event(&item) {
                            pipeline.dns_event(&h, payload);
                        }
                    }
                    if pipeline.dns_backlog() >= DNS_BATCH && !pipeline.emit_dns() {
                        anyhow::bail!("output closed");
                    }
                    while let Some(item) = loaded.http.next() {
                        if let Some((h, payload)) = decode_event(&item) {
                            pipeline.http_event(&h, payload);
                        }
                    }
                    if pipeline.http_backlog() >= DNS_BATCH && !pipeline.emit_http() {
                        anyhow::bail!("output closed");
                    }
                    // The map filled up: evict early, as the live agent does on the wake-up.
                    let mut woken = false;
                    while loaded.wakeup.next().is_some() {
                        woken = true;
                    }
                    if woken && !pipeline.scan(&mut loaded.flows, pkt.ts_ns, true)? {
                        anyhow::bail!("output closed");
                    }
                }
                Err(e) => {
                    st.run_errors += 1;
                    tracing::debug!(
                        packet = st.packets,
                        len = frame.len(),
                        "test run refused the frame: {e}"
                    );
                }
            }
        }
        if let Some(result) = batch.end.take() {
            break 'file result;
        }
        reader.recycle(batch);
    };
    drop(reader);
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }

    // Flows that timed out by the file's last timestamp, then everything still open.
    if let Some(t) = last_ts {
        pipeline.scan(&mut loaded.flows, t, false)?;
    }
    pipeline.flush(&mut loaded.flows, Status::EndOfInput, last_ts.unwrap_or(0))?;
    pipeline.report_dns();
    pipeline.report_http();
    let counters = loaded.counters.read().context("reading kernel counters")?;
    let names = pipeline.names.clone();
    let name = |i: u32| names.get(&i).cloned().unwrap_or_else(|| "pcap".into());
    report_kernel(&counters, &mut loaded.overflow, &name)?;
    let (records, dropped) = pipeline.finish(args.shutdown_timeout);
    tracing::info!(
        packets = st.packets,
        replayed = st.fed,
        malformed = counters.malformed + st.short + st.run_errors,
        non_ip = counters.non_ip,
        unsupported_link = st.unsupported_link,
        cut = st.cut,
        records,
        dropped,
        "replay finished"
    );
    match outcome {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            tracing::error!("{:#}", anyhow::Error::new(e));
            Ok(ExitCode::from(2))
        }
    }
}
