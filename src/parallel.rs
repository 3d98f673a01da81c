//! The thread pool that heavy operations run on; its size can be changed at run time.

use std::sync::{Arc, RwLock};

use rayon::{ThreadPool, ThreadPoolBuilder};

use crate::error::{Error, Result};

static POOL: RwLock<Option<Arc<ThreadPool>>> = RwLock::new(None);

/// More threads than this is a mistake, not a configuration.
const MAX_THREADS: usize = 1024;

/// Uses `threads` worker threads from now on; 0 means one per available core.
pub fn set_num_threads(threads: usize) -> Result<()> {
    if threads > MAX_THREADS {
        return Err(Error::OutOfRange(format!("at most {MAX_THREADS} threads, got {threads}")));
    }
    let pool = ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("blindfed-{i}"))
        .build()
        .map_err(|e| Error::InvalidInput(format!("cannot start {threads} threads: {e}")))?;
    *POOL.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(pool));
    Ok(())
}

/// The number of threads heavy operations use.
pub fn num_threads() -> usize {
    match POOL.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        Some(pool) => pool.current_num_threads(),
        None => rayon::current_num_threads(),
    }
}

/// Runs `f` on the configured pool (rayon's global pool until `set_num_threads` is called).
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let pool = POOL.read().unwrap_or_else(|e| e.into_inner()).clone();
    match pool {
        Some(pool) => pool.install(f),
        None => f(),
    }
}
