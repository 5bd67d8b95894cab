//! Peak and retained heap of loading a 100k-user / 50k-device desired state, measured with a
//! counting allocator: `cargo run --release --example desired_heap`. The `plan` and `apply`
//! processes hold this state for their whole pass, so its size sets a floor under their RSS.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::NaiveDate;
use dexscope::desired::{self, Mode};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size >= layout.size() {
            let live = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed)
                + (new_size - layout.size());
            PEAK.fetch_max(live, Ordering::Relaxed);
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn mib(n: usize) -> f64 {
    n as f64 / (1024.0 * 1024.0)
}

fn main() {
    let dir = std::env::temp_dir().join(format!("dexscope-heap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("desired.toml");
    let mut text = String::from("users = [\n");
    for n in 0..100_000 {
        text.push_str(&format!(
            "  \"user{n:06}@contoso-{}.example.com\",\n",
            n % 7
        ));
    }
    text.push_str("]\ndevices = [\n");
    for n in 0..50_000 {
        text.push_str(&format!("  \"{n:040x}\",\n"));
    }
    text.push_str("]\n");
    std::fs::write(&path, &text).expect("desired file");
    let file_len = text.len();
    drop(text);

    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let today = NaiveDate::from_ymd_opt(2026, 1, 1).expect("date");
    let loaded = desired::load(std::slice::from_ref(&path), today, Mode::Runtime)
        .expect("valid desired state");
    let peak = PEAK.load(Ordering::Relaxed) - base;
    let kept = LIVE.load(Ordering::Relaxed) - base;
    println!(
        "file {:.1} MiB; load: peak heap {:.1} MiB, retained {:.1} MiB ({} users, {} devices)",
        mib(file_len),
        mib(peak),
        mib(kept),
        loaded.state.users.len(),
        loaded.state.devices.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
