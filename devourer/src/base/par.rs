//! Work split over a few threads, results in order: a slice cut into contiguous parts, each
//! mapped on a thread of its own (the caller's included), for the large batches a replay's
//! last flush emits.

/// `f` over `items` cut into at most `threads` contiguous parts of at least `min_part` items,
/// the results in the parts' order; one call on the caller's thread when that is all there is.
pub fn map_parts<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    min_part: usize,
    f: impl Fn(&[T]) -> R + Sync,
) -> Vec<R> {
    let parts = threads.min(items.len() / min_part.max(1)).max(1);
    if parts == 1 {
        return vec![f(items)];
    }
    let size = items.len().div_ceil(parts);
    let mut pieces = items.chunks(size);
    let first = pieces.next().unwrap_or_default();
    std::thread::scope(|s| {
        let f = &f;
        // A part whose thread cannot start (a thread limit) runs on the caller's thread.
        let rest: Vec<_> = pieces
            .map(|p| {
                std::thread::Builder::new()
                    .spawn_scoped(s, move || f(p))
                    .map_err(|_| p)
            })
            .collect();
        let mut out = Vec::with_capacity(parts);
        out.push(f(first));
        for h in rest {
            out.push(match h {
                Ok(h) => h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)),
                Err(p) => f(p),
            });
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::map_parts;

    #[test]
    fn parts_come_back_in_order_and_cover_every_item() {
        let items: Vec<u32> = (0..10_000).collect();
        for threads in [0, 1, 2, 3, 8] {
            let parts = map_parts(&items, threads, 1000, <[u32]>::to_vec);
            assert!(parts.len() <= threads.max(1));
            assert_eq!(parts.concat(), items, "{threads} threads");
        }
    }

    #[test]
    fn small_batches_stay_on_the_callers_thread() {
        let me = std::thread::current().id();
        let parts = map_parts(&[1, 2, 3], 4, 1000, |_| std::thread::current().id());
        assert_eq!(parts, vec![me]);
        let parts = map_parts(&[0u8; 4000], 4, 1000, |_| std::thread::current().id());
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[0], me);
        assert!(parts[1..].iter().all(|t| *t != me));
    }
}
