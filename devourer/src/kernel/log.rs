//! The kernel program's own log lines (aya-log): rare events only (a full flow map, an insert
//! race, a failed wake-up, a malformed packet at most once a second per CPU), compiled in but
//! switched off at load time unless the agent logs the `devourer::kernel` target at debug
//! (`DEVOURER_LOG=devourer::kernel=debug`, or `debug`). Forwarded to the agent's tracing output.

use aya::Ebpf;
use aya_log::EbpfLogger;

/// Where the program's lines go: the `devourer::kernel` tracing target, at debug.
struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        tracing::debug!(target: "devourer::kernel", "{}", record.args());
    }

    fn flush(&self) {}
}

/// Reads the program's log ring.
pub struct KernelLog(EbpfLogger<ToTracing>);

impl KernelLog {
    /// Whether the program should log at all (decided at load time).
    pub fn wanted() -> bool {
        tracing::enabled!(target: "devourer::kernel", tracing::Level::DEBUG)
    }

    /// Takes the program's log ring; `None` (with a warning) when it cannot.
    pub fn start(ebpf: &mut Ebpf) -> Option<Self> {
        match EbpfLogger::init_with_logger(ebpf, ToTracing) {
            Ok(l) => Some(Self(l)),
            Err(e) => {
                tracing::warn!("the kernel program's log is unavailable: {e}");
                None
            }
        }
    }

    /// Forwards what the program logged since the last call.
    pub fn flush(&mut self) {
        self.0.flush();
    }
}
