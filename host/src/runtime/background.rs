//! The background runtime: where a tenant whose plugins burn CPU has its
//! work run, at the lowest OS scheduling priority.
//!
//! CPU turns (`cpu_turns`) hold a tenant's long plugin calls to one core's
//! worth, and long calls of all tenants to one core fewer than the
//! machine's. On a 2-core machine that one core is still taken from
//! everyone else whenever a runaway plugin spins: measured with `cairn
//! bench --noisy-only` (6 runs), a well-behaved tenant's p99 beside a
//! tenant whose plugins burn CPU was 37–58 ms (mean 47.5), against 35–43 ms
//! beside the same tenant's event flood with no plugin at all. Turns cannot
//! do better by themselves: they cannot know when the server's other work
//! is about to need the core. With this runtime, in the same sitting:
//! 27–47 ms (mean 37.1), the flood's level.
//!
//! The operating system can: threads of a nice-19 runtime get the CPU only
//! when threads at normal priority leave it (Linux CFS weighs nice 19 at
//! 15 against 1024), and a normal thread that wakes preempts them. So a
//! tenant whose plugin calls ran long lately
//! ([`CpuTurns::burnt_lately`](super::cpu_turns::CpuTurns::burnt_lately))
//! has its pipeline and workflow lanes, and each of its contacts' and
//! runs' work (where its plugins are called), spawned here, the place
//! chosen anew for each contact and run: its plugins, still
//! under every limit (deadline, fuel, memory, turns), run on the CPU nobody
//! else wants, and the server's own work, HTTP and database, and every
//! other tenant's lanes keep the CPU at once. The work is not starved on an
//! idle machine (a lower priority, not a cap). Its SQL statements run on
//! the store's own threads, at normal priority; the steps between them run
//! here, so on a saturated machine a write turn it holds can stretch, and
//! the write gate charges the tenant for that time (`store::write_gate`).
//!
//! Elsewhere than Linux, the runtime is still separate but its threads keep
//! their priority.

use std::sync::OnceLock;

use tokio::runtime::{Handle, Runtime};

/// Nice value of the background threads: the lowest priority.
#[cfg(target_os = "linux")]
const NICE: i32 = 19;

static BACKGROUND: OnceLock<Option<Runtime>> = OnceLock::new();

/// The background runtime's handle, started on first use (one per process,
/// never stopped: its tasks belong to the runtimes of the services that
/// spawned them, which abort them). `None` when it could not be started:
/// the caller then runs the work where it would have anyway.
pub fn handle() -> Option<Handle> {
    BACKGROUND
        .get_or_init(|| match build() {
            Ok(runtime) => Some(runtime),
            Err(e) => {
                tracing::warn!(
                    "could not start the background runtime (CPU-burning tenants run beside the others): {e}"
                );
                None
            }
        })
        .as_ref()
        .map(|runtime| runtime.handle().clone())
}

fn build() -> std::io::Result<Runtime> {
    let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .thread_name("cairn-background")
        .on_thread_start(lower_priority)
        .enable_all()
        .build()
}

/// Lower the calling thread's priority (on Linux the nice value is a
/// per-thread attribute, despite POSIX: `setpriority(2)`, BUGS).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), NICE) {
        tracing::warn!("could not lower a background thread's priority: {e}");
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn background_threads_run_at_the_lowest_priority() {
        let handle = super::handle().expect("the background runtime starts");
        let nice = handle.block_on(async {
            tokio::spawn(async { rustix::process::getpriority_process(Some(rustix::thread::gettid())) }).await
        });
        assert_eq!(nice.ok().and_then(Result::ok), Some(super::NICE));
    }
}
