//! Measures heap bytes per account (with one bucket) and per open hold with a
//! counting allocator. The targets: <= 256 bytes each.
//!
//! `cargo run --release -p creditd-bench --bin memory`

use creditd_bench::{id_into, loaded_engine, reserve};
use creditd_engine::command::Charge;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

fn main() {
    const N: u64 = 1_000_000;
    let base = live();
    let engine = loaded_engine(N, 1_000_000);
    let after_accounts = live();
    let per_account = (after_accounts - base) as f64 / N as f64;
    let mut a = [0u8; 32];
    for n in 0..N {
        let account = id_into(&mut a, b"acct:", n);
        reserve(&engine, account, n, Charge::Amount(10), None);
    }
    let after_holds = live();
    let per_hold = (after_holds - after_accounts) as f64 / N as f64;
    println!("accounts: {N}");
    println!("heap bytes per account with one bucket (incl. its grant's idempotency record and history entry): {per_account:.0}");
    println!("heap bytes per open hold (incl. its history entry): {per_hold:.0}");
    println!(
        "ids: account 'acct:<n>' ({} bytes avg), hold 'h:<n>'",
        5 + 6
    );
    use std::mem::size_of;
    println!(
        "sizes: Account {} B, Bucket {} B, Hold {} B, Done {} B, HistoryEntry {} B",
        size_of::<creditd_engine::account::Account>(),
        size_of::<creditd_engine::bucket::Bucket>(),
        size_of::<creditd_engine::hold::Hold>(),
        size_of::<creditd_engine::account::Done>(),
        size_of::<creditd_engine::history::HistoryEntry>(),
    );
    drop(engine);
}
