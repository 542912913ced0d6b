//! How the library runs its async parts (rattler's solver and installer, the ZeroMQ kernel
//! client, HTTP): the library is blocking, and every async step goes through
//! [`block_on`], which drives the future on a runtime of its own on a fresh thread.
//!
//! So a caller may be a plain thread (the CLI), a tokio blocking thread (a server's
//! `spawn_blocking`), or even, by mistake, an async task: none of them hits tokio's
//! "Cannot start a runtime from within a runtime" panic, and no runtime is hidden
//! behind a caller's back on its own thread.

use std::future::Future;

/// Run `future` to completion on a two-worker runtime on its own thread.
pub fn block_on<F>(future: F) -> std::io::Result<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?;
                Ok(runtime.block_on(future))
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn works_from_inside_a_runtime() {
        let outer = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let value = outer.block_on(async { super::block_on(async { 40 + 2 }).unwrap() });
        assert_eq!(value, 42);
    }
}
