//! Loom model of the per-page remote-free lists and the owner's stack of pages that have one.
//!
//! Mirrors `src/heap.rs`:
//! - `push_remote_small`: load the page's `list` word (`Relaxed`); write the list's first block
//!   (or null) into the freed block's first word (a plain store); `compare_exchange_weak(list,
//!   new, AcqRel, Relaxed)` with the block first, the list's last block kept (or the block itself
//!   when the list was empty) and the length one more, until it succeeds. If the list was empty:
//!   push the page onto the owner's `remote_pages` stack (store `next_page` `Relaxed`, then
//!   `compare_exchange_weak(head, page, Release, Relaxed)`).
//! - `collect_remote_pages`: `remote_pages.swap(null, Acquire)`; for each page, read its
//!   `next_page` (`Relaxed`) *before* `list.swap(0, AcqRel)`, then walk nothing: the list's
//!   first and last block and its length come from the word; the owner writes only the last
//!   block's link (to splice it onto the page's free list).
//!
//! Blocks are slots of an array, two pages of two blocks each; a "pointer" is `index + 1` (0 is
//! null), and the `list` word packs first, last and length as the real one does. Each block's
//! link and payload, and each page's `next_page`, are loom cells or atomics, so loom reports a
//! data race where a happens-before edge is missing; every step is preceded by a scheduling
//! point (see `remote_free.rs` on tokio-rs/loom#392).
//!
//! Checked: every block freed is collected exactly once, on its own page's list, with the length
//! the word says and the contents its freer left; a page is on the stack once per time its list
//! goes from empty to not empty. Controls: reading `next_page` after the swap (a freeing thread
//! may then push the page again, overwriting it, and the pages after it in the owner's walk are
//! lost) and a `Relaxed` block push are each caught.

use loom::sync::atomic::{AtomicU64, AtomicUsize, Ordering, Ordering::*};
use loom::sync::Arc;
use rustmalloc_loom::{blocks, two_freers_while_owner_collects, Block, Sched};

const PAGES: usize = 2;
const PER_PAGE: usize = 2;
const NBLOCKS: usize = PAGES * PER_PAGE;


struct Slot {
    list: AtomicU64,
    next_page: AtomicUsize,
}

struct Heap {
    remote_pages: AtomicUsize,
    slots: Vec<Slot>,
    blocks: Vec<Block>,
    sched: Sched,
}

#[derive(Clone, Copy)]
struct Variant {
    push_success: Ordering,
    next_before_swap: bool,
}

const REAL: Variant = Variant { push_success: AcqRel, next_before_swap: true };

fn pack(first: u64, last: u64, len: u64) -> u64 {
    first | last << 8 | len << 16
}

impl Heap {
    fn new() -> Heap {
        Heap {
            remote_pages: AtomicUsize::new(0),
            slots: (0..PAGES)
                .map(|_| Slot { list: AtomicU64::new(0), next_page: AtomicUsize::new(0) })
                .collect(),
            blocks: blocks(NBLOCKS),
            sched: Sched::new(),
        }
    }


    /// `heap::push_remote_small` of block `i` (page `i / PER_PAGE`).
    fn push(&self, i: usize, v: Variant) {
        let page = i / PER_PAGE;
        let p = (i + 1) as u64;
        let slot = &self.slots[page];
        self.sched.point();
        let mut list = slot.list.load(Relaxed);
        loop {
            let (first, last, len) = (list & 0xFF, (list >> 8) & 0xFF, list >> 16);
            let (link, last) = if len == 0 { (0, p) } else { (first as usize, last) };
            self.blocks[i].next.with_mut(|n| unsafe { *n = link });
            self.sched.point();
            match slot.list.compare_exchange_weak(list, pack(p, last, len + 1), v.push_success, Relaxed) {
                Ok(_) if len == 0 => break,
                Ok(_) => return,
                Err(now) => list = now,
            }
        }
        self.sched.point();
        let mut head = self.remote_pages.load(Relaxed);
        loop {
            slot.next_page.store(head, Relaxed);
            self.sched.point();
            match self.remote_pages.compare_exchange_weak(head, page + 1, Release, Relaxed) {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }

    /// `heap::collect_remote_pages`: appends each collected block as (page, block).
    fn collect(&self, out: &mut Vec<(usize, usize)>, v: Variant) {
        self.sched.point();
        if self.remote_pages.load(Relaxed) == 0 {
            return;
        }
        self.sched.point();
        let mut page = self.remote_pages.swap(0, Acquire);
        let mut pages_seen = 0;
        while page != 0 {
            pages_seen += 1;
            assert!(pages_seen <= 16, "cycle on the stack of pages");
            let slot = &self.slots[page - 1];
            self.sched.point();
            let mut next = if v.next_before_swap { slot.next_page.load(Relaxed) } else { 0 };
            self.sched.point();
            let list = slot.list.swap(0, AcqRel);
            if !v.next_before_swap {
                self.sched.point();
                next = slot.next_page.load(Relaxed);
            }
            let (first, last, len) = ((list & 0xFF) as usize, ((list >> 8) & 0xFF) as usize, list >> 16);
            assert!(len > 0, "a page on the stack with an empty list");
            // The real owner reads no block but writes the last one's link; the model walks the
            // chain to check it (reads are what the owner's later pops do).
            let mut b = first;
            let mut n = 0;
            let mut tail = 0;
            while b != 0 {
                let i = b - 1;
                n += 1;
                assert!(n <= len, "the chain is longer than the word says");
                assert_eq!(i / PER_PAGE, page - 1, "a block on another page's list");
                let val = self.blocks[i].payload.with(|x| unsafe { *x });
                assert_eq!(val, 0xF00 + i as u64, "block {i} collected without its freer's writes");
                self.blocks[i].payload.with_mut(|x| unsafe { *x = 0 });
                out.push((page - 1, i));
                tail = b;
                b = self.blocks[i].next.with(|x| unsafe { *x });
            }
            assert_eq!(n, len, "the chain is shorter than the word says");
            assert_eq!(tail, last, "the word's last block is not the chain's");
            self.blocks[last - 1].next.with_mut(|x| unsafe { *x = 0 }); // the splice
            page = next;
        }
    }
}

fn free_blocks(h: &Heap, blocks: &[usize], v: Variant) {
    for &i in blocks {
        h.sched.point();
        h.blocks[i].payload.with_mut(|x| unsafe { *x = 0xF00 + i as u64 });
        h.push(i, v);
    }
}

/// Two freeing threads, each freeing one block of each page, while the owner collects twice;
/// then the owner collects what is left. Every block must come back once.
fn model(v: Variant, preemptions: usize, per_thread: [&'static [usize]; 2]) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(preemptions);
    b.check(move || {
        let h = Arc::new(Heap::new());
        two_freers_while_owner_collects(
            h.clone(),
            per_thread,
            move |h: &Heap, blocks: &[usize]| free_blocks(h, blocks, v),
            |h: &Heap, got: &mut Vec<usize>| {
                let mut out = Vec::new();
                h.collect(&mut out, v);
                got.extend(out.iter().map(|o| o.1));
            },
        );
        assert!(h.remote_pages.load(Relaxed) == 0);
    });
}

#[test]
fn two_freers_two_pages_owner_collecting() {
    model(REAL, 3, [&[0, 2], &[1, 3]]);
}

#[test]
fn two_freers_one_page_owner_collecting() {
    model(REAL, 3, [&[0], &[1]]);
}

/// Reading `next_page` after the swap: a freeing thread can push the page again in between and
/// overwrite it, and the owner then loses the pages after it in its walk.
#[test]
#[should_panic(expected = "blocks lost")]
fn next_read_after_swap_is_caught() {
    model(Variant { push_success: AcqRel, next_before_swap: false }, 3, [&[0, 2], &[1, 3]]);
}

/// A `Relaxed` block push: the owner's reads of the block are then a data race.
#[test]
#[should_panic(expected = "Causality violation")]
fn relaxed_push_is_caught() {
    model(Variant { push_success: Relaxed, next_before_swap: true }, 2, [&[0], &[1]]);
}
