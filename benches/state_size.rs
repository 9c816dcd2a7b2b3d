//! Limiter state per tracked user: heap bytes held by the limiter after 100 k distinct users,
//! measured with a counting allocator (so the map's own overhead at its real load factor counts).
//!
//! `cargo bench --bench state_size`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use surgeguard::core::limiter::{Limiter, Quota};
use surgeguard::wire::time::Millis;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn main() {
    // `cargo bench` passes `--bench`; any other argument is a filter we do not use.
    let quota = Quota { limit: 600, grace_allowance: 60, grace_window_ms: 3_600_000 };
    let ids: Vec<String> = (0..1_000_000).map(|i| format!("user-{i:07}")).collect();
    println!("state_size: {} bytes of key + state per tracked user before map overhead", Limiter::state_bytes());
    for users in [100_000usize, 1_000_000] {
        let before = LIVE.load(Ordering::Relaxed);
        let mut l = Limiter::new(60, 3600);
        for (i, id) in ids.iter().take(users).enumerate() {
            l.check(id, 0, Millis(1_796_029_200_000 + (i / 100) as i64), 1, quota);
        }
        let held = LIVE.load(Ordering::Relaxed) - before;
        println!(
            "state_size: {users} users tracked: {held} heap bytes = {:.1} bytes per user (map capacity at its load factor included)",
            held as f64 / users as f64
        );
        drop(l);
    }
}
