//! Drops with the kernel's reason (live only): whether this kernel reports them (the
//! `kfree_skb` tracepoint carries a reason from 5.17; before, it also fires on ordinary frees),
//! where `sk_buff`'s fields are and what each reason is called, all from the running kernel's
//! BTF (the reasons' numbering changes between kernels); the raw tracepoint program attached,
//! and its maps read each scan.

use std::{collections::HashMap, io};

use aya::{Ebpf, programs::RawTracePoint};
use devourer_common::drop::{
    DROP_REASONS_ENTRIES, DROP_REASONS_MAP, DROPS_MAP, DROPS_MAP_ENTRIES, DropKey, DropValue,
    PROG_KFREE_SKB, SkbOffsets,
};

use super::{
    btf::{Btf, BtfError},
    maps::HashReader,
};

/// One aggregate the drop program left: a tuple (as the counting program keys it), the
/// kernel's reason (its name in the running kernel's enum), and what was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drop {
    pub key: devourer_common::flow::FlowKey,
    pub reason: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

/// The enumerators' common prefix, left out of the names records and metrics carry.
const PREFIX: &str = "SKB_DROP_REASON_";
/// The name of a value outside the kernel's enums (bounded: one label for all of them).
pub const UNKNOWN: &str = "UNKNOWN";

/// What the drop program needs from this kernel, or why it cannot run here.
pub struct Support {
    pub offsets: SkbOffsets,
    pub names: ReasonNames,
}

/// Reason values to names, from `enum skb_drop_reason` (and, for subsystem-coded reasons
/// in the upper 16 bits, `enum skb_drop_reason_subsys`). Names are leaked once at start: a
/// few hundred short strings shared by every record.
#[derive(Clone, Debug)]
pub struct ReasonNames {
    names: HashMap<u32, &'static str>,
    subsystems: HashMap<u32, &'static str>,
}

impl ReasonNames {
    pub fn from_btf(btf: &Btf) -> Result<Self, BtfError> {
        let leak = |s: &str| -> &'static str { Box::leak(s.to_owned().into_boxed_str()) };
        let mut names = HashMap::new();
        for (name, value) in btf.enumerators("skb_drop_reason")? {
            if name == "SKB_DROP_REASON_MAX" || name == "SKB_DROP_REASON_SUBSYS_MASK" {
                continue;
            }
            let short = name
                .strip_prefix(PREFIX)
                .or_else(|| name.strip_prefix("SKB_"))
                .unwrap_or(&name);
            names.entry(value).or_insert_with(|| leak(short));
        }
        let mut subsystems = HashMap::new();
        for (name, value) in btf
            .enumerators("skb_drop_reason_subsys")
            .unwrap_or_default()
        {
            if let Some(sub) = name.strip_prefix("SKB_DROP_REASON_SUBSYS_")
                && sub != "NUM"
                && sub != "CORE"
            {
                subsystems.insert(value, leak(&format!("SUBSYS_{sub}")));
            }
        }
        Ok(Self { names, subsystems })
    }

    /// The name of reason `value`: the kernel's, a subsystem's, or [`UNKNOWN`].
    pub fn name(&self, value: u32) -> &'static str {
        if let Some(n) = self.names.get(&value) {
            return n;
        }
        self.subsystems
            .get(&(value >> 16))
            .copied()
            .unwrap_or(UNKNOWN)
    }
}

impl Support {
    /// Reads what the drop program needs from `btf`; an error says why drops are not
    /// reported on this kernel.
    pub fn probe(btf: &Btf) -> Result<Self, String> {
        let args = btf
            .tracepoint_args("kfree_skb")
            .map_err(|e| format!("no kfree_skb tracepoint in BTF ({e})"))?;
        if args.get(2).map(String::as_str) != Some("skb_drop_reason") {
            return Err(
                "kfree_skb has no drop reason (5.17): it also fires on ordinary frees".to_owned(),
            );
        }
        let member = |name: &str, size: u32| -> Result<u32, String> {
            let m = btf
                .member("sk_buff", name)
                .map_err(|e| format!("sk_buff.{name}: {e}"))?;
            if m.size != size {
                return Err(format!("sk_buff.{name} is {} bytes, not {size}", m.size));
            }
            Ok(m.offset)
        };
        let offsets = SkbOffsets {
            len: member("len", 4)?,
            head: member("head", 8)?,
            data: member("data", 8)?,
            network_header: member("network_header", 2)?,
            protocol: member("protocol", 2)?,
            _pad: 0,
        };
        let names = ReasonNames::from_btf(btf).map_err(|e| e.to_string())?;
        Ok(Self { offsets, names })
    }

    /// Probes the running kernel.
    pub fn running() -> Result<Self, String> {
        let btf = Btf::vmlinux().map_err(|e| e.to_string())?;
        Self::probe(&btf)
    }
}

/// The attached drop program's maps and the names of its reasons.
pub struct DropProbe {
    names: ReasonNames,
    drops: HashReader<DropKey, DropValue>,
    totals: HashReader<u32, DropValue>,
}

impl DropProbe {
    /// Loads and attaches the drop program of a loaded object (its offsets set at load) and
    /// takes its maps.
    pub fn attach(ebpf: &mut Ebpf, ncpus: usize, names: ReasonNames) -> Result<Self, String> {
        attach_raw_tracepoint(ebpf, PROG_KFREE_SKB, "kfree_skb")?;
        Ok(Self {
            drops: reader(ebpf, DROPS_MAP, ncpus, DROPS_MAP_ENTRIES)?,
            totals: reader(ebpf, DROP_REASONS_MAP, ncpus, DROP_REASONS_ENTRIES)?,
            names,
        })
    }

    /// Takes the drops by tuple and reason since the last call, summed over CPUs.
    pub fn take(&mut self) -> io::Result<Vec<Drop>> {
        let names = &self.names;
        let mut out = Vec::new();
        self.drops.drain(|k, slots| {
            let (packets, bytes) = sum(slots);
            if packets > 0 {
                out.push(Drop {
                    key: k.key,
                    reason: names.name(k.reason),
                    packets,
                    bytes,
                });
            }
        })?;
        Ok(out)
    }

    /// Every drop so far by reason name: (name, packets, bytes), summed over CPUs and over
    /// values that share a name.
    pub fn totals(&mut self) -> io::Result<Vec<(&'static str, u64, u64)>> {
        let names = &self.names;
        let mut by: HashMap<&'static str, (u64, u64)> = HashMap::new();
        self.totals.for_each(|reason, slots| {
            let (p, b) = sum(slots);
            let e = by.entry(names.name(reason)).or_default();
            e.0 += p;
            e.1 += b;
        })?;
        let mut out: Vec<_> = by.into_iter().map(|(n, (p, b))| (n, p, b)).collect();
        out.sort_unstable();
        Ok(out)
    }
}

/// Loads raw tracepoint program `name` of a loaded object and attaches it to `tracepoint`.
pub(super) fn attach_raw_tracepoint(
    ebpf: &mut Ebpf,
    name: &str,
    tracepoint: &str,
) -> Result<(), String> {
    let prog: &mut RawTracePoint = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("the object has no program {name}"))?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    prog.load().map_err(|e| format!("loading {name}: {e}"))?;
    prog.attach(tracepoint)
        .map_err(|e| format!("attaching to {tracepoint}: {e}"))?;
    Ok(())
}

/// Takes hash map `name` out of a loaded object, to be read as one of `entries` entries.
pub(super) fn reader<K: Copy, V: Copy>(
    ebpf: &mut Ebpf,
    name: &str,
    ncpus: usize,
    entries: u32,
) -> Result<HashReader<K, V>, String> {
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| format!("no map {name}"))?;
    HashReader::new(map, ncpus, entries as usize).map_err(|e| format!("{name}: {e}"))
}

fn sum(slots: &[DropValue]) -> (u64, u64) {
    slots
        .iter()
        .fold((0, 0), |(p, b), s| (p + s.packets, b + s.bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_from_5_17_on_reports_drops_and_an_older_one_says_why_not() {
        let v = aya::util::KernelVersion::current().unwrap();
        match Support::running() {
            Ok(s) => {
                assert!(s.offsets.len > 0 && s.offsets.network_header > 0);
                let nf = (0..4096).find(|v| s.names.name(*v) == "NETFILTER_DROP");
                assert!(nf.is_some(), "NETFILTER_DROP among the reasons");
                assert_eq!(s.names.name(0xdead_0000 | 7), UNKNOWN);
            }
            Err(why) if std::path::Path::new(super::super::btf::VMLINUX).exists() => assert!(
                v < aya::util::KernelVersion::new(5, 17, 0),
                "{v:?} has drop reasons, yet: {why}"
            ),
            Err(why) => eprintln!("no kernel BTF here: {why}"),
        }
    }
}
