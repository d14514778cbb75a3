//! The background runtime: where the plugin calls of a tenant whose plugins
//! burn CPU run, at the lowest OS scheduling priority (Linux's idle class).
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
//! The operating system can: threads in Linux's idle scheduling class
//! (`SCHED_IDLE`, below nice 19, which they also have) get the CPU only
//! when threads at normal priority leave it, and a normal thread that wakes
//! preempts them at once (see `idle_policy` for why not nice 19 alone). So
//! each plugin call of a tenant whose plugins ran long lately
//! ([`CpuTurns::burnt_lately`](super::cpu_turns::CpuTurns::burnt_lately))
//! runs its instance here, still under every limit (deadline, fuel, memory,
//! turns), on the CPU nobody else wants; the server's own work, HTTP and
//! database, and every other tenant's calls keep the CPU at once. The work
//! is not starved on an idle machine (a lower priority, not a cap).
//!
//! Only the call's instance comes here (`invoke::Runtime::call_for_tenant`),
//! not the lane or run that asked for it: the database work around a call
//! (claims, commits, run saves) holds SQLite's one writer, and a write
//! transaction held by a task on this runtime would wait for a worker
//! between each two statements, behind runaway plugins at the lowest
//! priority, while every other tenant's writes wait behind it. An earlier
//! version placed whole lanes here and traced exactly that: write turns of
//! 6–18 ms and hand-overs up to 13 ms late in `cairn bench --noisy-only`.
//!
//! Threads started from a thread inherit its nice value: nothing that starts
//! threads for others (a SQLite connection, a blocking pool) should be
//! started from here. The SQLite pool opens its connections when a store
//! opens and keeps them. Left as they are: a plugin's own host calls (store
//! reads and writes, outbound HTTP) run here with its instance, so an
//! action's store write holds SQLite's writer from a low-priority thread,
//! and sqlx replaces a connection that fails its release check from the
//! task that dropped it.
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
/// never stopped: each of its tasks is one call, aborted when its caller
/// stops waiting, `invoke::Runtime::call_for_tenant`). `None` when it could
/// not be started: the caller then runs the work where it would have anyway.
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

/// As many threads as the process has CPU turns (one fewer than the
/// cores): a thread per core would let the calls placed here run wasm on
/// every core at once (a long call in its turn beside the first ticks of
/// others, which need no turn, see `cpu_turns`), and an idle-class thread
/// still costs the normal ones on its core: each wakeup preempts it, and it
/// holds the core's caches and the kernel's locks of the process (a memory
/// hog's page faults). Measured with `cairn bench --noisy-only --rounds 3`,
/// alternating builds: B's p99 beside A's burning plugins, per round,
/// median 12.4 ms (10 of 14 rounds at most 12.7 ms) against 13.2 ms (5 of
/// 12) with a thread per core: a small gain, within the noise of the
/// ratios to B alone, kept because it is what the turns promise.
fn build() -> std::io::Result<Runtime> {
    let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(super::cpu_turns::process_turns(cores))
        .thread_name("cairn-background")
        .on_thread_start(lower_priority)
        .enable_all()
        .build()
}

/// Lower the calling thread's priority (on Linux the nice value and the
/// scheduling policy are per-thread attributes, despite POSIX:
/// `setpriority(2)`, BUGS), to the idle policy.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), NICE) {
        tracing::warn!("could not lower a background thread's priority: {e}");
    }
    #[cfg(target_os = "linux")]
    if let Err(e) = idle_policy() {
        tracing::warn!("could not put a background thread in the idle scheduling class: {e}");
    }
}

/// Put the calling thread in `SCHED_IDLE`, the class below every nice
/// value. Why, with nice 19 already: a thread at normal priority that
/// wakes on a core where a nice-19 thread runs may still wait for that
/// thread's time slice (EEVDF protects a running task's slice), and a
/// request of tenant B wakes threads a dozen times on its way (HTTP, the
/// intake's commit, the pipeline, each query's SQLite thread, the runner,
/// the webhook). A normal thread that wakes preempts an idle-class one at
/// once. Measured with `cairn bench --noisy-only --a-rate 200` (A's CPU-
/// burning plugins at B's event rate), 13 runs in one hour: B's p99 over
/// B alone in the burning phase ×1.22–1.66 (median ×1.43, 5 runs) against
/// ×1.58–2.26 (median ×1.81, 8 runs) with nice 19 alone. (An earlier
/// version, which ran whole lanes here, found no gain in it: their write
/// transactions then stalled in this class.) Rustix has no call for it,
/// hence libc.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn idle_policy() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `sched_setscheduler` reads `param` (a valid, initialised
    // struct that outlives the call) and changes only the calling thread's
    // policy (pid 0); SCHED_IDLE requires priority 0 and no privilege.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn the_background_runtime_has_a_thread_per_process_cpu_turn() {
        let handle = super::handle().expect("the background runtime starts");
        let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
        assert_eq!(handle.metrics().num_workers(), crate::runtime::cpu_turns::process_turns(cores));
    }

    #[test]
    fn background_threads_run_at_the_lowest_priority() {
        let handle = super::handle().expect("the background runtime starts");
        let (nice, policy) = handle
            .block_on(async {
                tokio::spawn(async {
                    let tid = rustix::thread::gettid();
                    (rustix::process::getpriority_process(Some(tid)).ok(), policy_of(tid.as_raw_nonzero().get()))
                })
                .await
            })
            .expect("the probe ran");
        assert_eq!(nice, Some(super::NICE));
        assert_eq!(policy, Some(SCHED_IDLE), "the background threads are in the idle class");
        assert_eq!(policy_of(rustix::thread::gettid().as_raw_nonzero().get()), Some(0), "the caller's is unchanged");
    }

    /// `SCHED_IDLE` as `/proc` shows it.
    const SCHED_IDLE: u32 = 5;

    /// Thread `tid`'s scheduling policy: the 41st field of its `stat`
    /// (after the name, which may hold spaces, in parentheses).
    fn policy_of(tid: i32) -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
        let after_name = &stat[stat.rfind(')')? + 1..];
        // Field 3 (state) is the first after the name.
        after_name.split_whitespace().nth(41 - 3).and_then(|f| f.parse().ok())
    }

    #[test]
    fn queries_from_background_threads_start_no_low_priority_database_threads() {
        let db = crate::store::testing::TempSqlite::new();
        // The store opens on a thread at normal priority, as the server's does.
        let opener = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let store = opener.block_on(crate::store::Store::open(&db.url())).expect("the store opens");
        // More queries at once than the pool has connections, all from the
        // background runtime (as plugins' host calls make them): a pool that
        // opened connections on demand would start their threads here.
        let handle = super::handle().expect("the background runtime starts");
        handle.block_on(async {
            let mut queries = tokio::task::JoinSet::new();
            for _ in 0..32 {
                let store = store.clone();
                queries.spawn(async move { sqlx::query("SELECT 1").execute(store.pool()).await.map(|_| ()) });
            }
            while let Some(done) = queries.join_next().await {
                assert!(matches!(done, Ok(Ok(()))), "{done:?}");
            }
        });
        let mut seen = 0;
        for task in std::fs::read_dir("/proc/self/task").expect("/proc") {
            let path = task.expect("a thread").path();
            let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            if !name.starts_with("sqlx-sqlite") {
                continue;
            }
            let tid = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse().ok());
            // Another test's thread may have ended meanwhile.
            let Ok(nice) = rustix::process::getpriority_process(tid.and_then(rustix::process::Pid::from_raw)) else {
                continue;
            };
            assert_eq!(nice, 0, "database thread {path:?} runs at a lowered priority");
            seen += 1;
        }
        assert!(seen > 0, "the store's connection threads were found");
    }
}
