//! Per-thread state of the fast path: a word -> tokens cache and reusable buffers.
//!
//! Most words of a corpus repeat, so BPE results are cached by word bytes. Each thread keeps its own
//! caches (no locks on the hot path), one per tokenizer instance that recently ran on the thread, keyed
//! by the instance's id. A cache is cleared when full, which bounds memory at roughly
//! `MAX_TOKENIZERS x (MAX_WORDS x ~64 B + MAX_TOKENS x 8 B)` per thread (~30 MiB).

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use rustc_hash::FxHashMap;

use super::added::Piece;
use super::bpe::Scratch;

/// Words longer than this (bytes) are not cached: rare, and they would crowd the arena.
pub(crate) const MAX_WORD_LEN: usize = 128;
/// Cached words per cache before it is cleared.
const MAX_WORDS: usize = 1 << 16;
/// Cached tokens (ids) per cache before it is cleared.
const MAX_TOKENS: usize = 1 << 18;
/// Tokenizer instances with a cache on one thread; the least recently used one is dropped beyond this.
const MAX_TOKENIZERS: usize = 4;

/// A fresh id for a tokenizer instance, so instances never share cache entries.
pub(crate) fn next_instance_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Word bytes -> the ids and byte lengths of its tokens.
#[derive(Debug, Default)]
pub(crate) struct WordCache {
    /// Word -> (first index into the arenas, token count).
    map: FxHashMap<Box<[u8]>, (u32, u32)>,
    ids: Vec<u32>,
    lens: Vec<u32>,
}

impl WordCache {
    /// The cached tokens of `word`: (ids, byte lengths).
    #[inline]
    pub(crate) fn get(&self, word: &[u8]) -> Option<(&[u32], &[u32])> {
        let &(start, n) = self.map.get(word)?;
        let range = start as usize..(start + n) as usize;
        Some((&self.ids[range.clone()], &self.lens[range]))
    }

    /// Remember the tokens of `word` (clearing everything first if the cache is full).
    pub(crate) fn insert(&mut self, word: &[u8], ids: &[u32], lens: &[u32]) {
        if word.len() > MAX_WORD_LEN {
            return;
        }
        if self.map.len() >= MAX_WORDS || self.ids.len() + ids.len() > MAX_TOKENS {
            self.map.clear();
            self.ids.clear();
            self.lens.clear();
        }
        let start = self.ids.len() as u32;
        self.ids.extend_from_slice(ids);
        self.lens.extend_from_slice(lens);
        self.map.insert(word.into(), (start, ids.len() as u32));
    }
}

/// Buffers one encode call reuses.
#[derive(Debug, Default)]
pub(crate) struct Buffers {
    /// BPE working memory.
    pub scratch: Scratch,
    /// Added-token passes.
    pub pieces: Vec<Piece>,
    /// Second-pass pieces of one first-pass piece.
    pub sub_pieces: Vec<Piece>,
    /// Pre-tokenizer split results, two levels to refine one into the other.
    pub splits: Vec<(usize, usize)>,
    /// See `splits`.
    pub splits_next: Vec<(usize, usize)>,
    /// Words of one piece.
    pub words: Vec<(usize, usize)>,
    /// A piece with its prefix space.
    pub prefixed: String,
    /// Tokens of one word before caching.
    pub word_ids: Vec<u32>,
    /// Byte lengths of `word_ids`.
    pub word_lens: Vec<u32>,
    /// A word's cache key, when it is not the word's bytes.
    pub key: Vec<u8>,
}

/// One encode call in progress: the thread's word cache and buffers, and the tokens appended so far.
pub(crate) struct Sink<'a> {
    /// Tokenizations of the words this thread has seen.
    pub words: &'a mut WordCache,
    /// Working memory reused across calls.
    pub buffers: &'a mut Buffers,
    /// Token ids, in order.
    pub ids: Vec<u32>,
    /// Per token, the byte range `[start, end)` of the text it came from.
    pub offsets: Vec<(u32, u32)>,
}

#[derive(Default)]
struct Local {
    /// (instance id, its cache), most recently used last.
    caches: Vec<(u64, WordCache)>,
    buffers: Buffers,
}

thread_local! {
    static LOCAL: RefCell<Local> = RefCell::new(Local::default());
}

/// Run `f` with this thread's cache for tokenizer `instance` and its buffers.
///
/// `f` must not call `with_local` again (the state is borrowed for the duration).
pub(crate) fn with_local<R>(instance: u64, f: impl FnOnce(&mut WordCache, &mut Buffers) -> R) -> R {
    LOCAL.with(|cell| {
        let mut local = cell.borrow_mut();
        let Local { caches, buffers } = &mut *local;
        match caches.iter().position(|(id, _)| *id == instance) {
            Some(i) if i + 1 == caches.len() => {}
            Some(i) => {
                let entry = caches.remove(i);
                caches.push(entry);
            }
            None => {
                if caches.len() >= MAX_TOKENIZERS {
                    caches.remove(0);
                }
                caches.push((instance, WordCache::default()));
            }
        }
        let cache = &mut caches.last_mut().expect("just pushed").1;
        f(cache, buffers)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caches_are_per_instance() {
        let (a, b) = (next_instance_id(), next_instance_id());
        with_local(a, |cache, _| cache.insert(b"word", &[1, 2], &[2, 2]));
        with_local(b, |cache, _| assert!(cache.get(b"word").is_none()));
        with_local(a, |cache, _| {
            let (ids, lens) = cache.get(b"word").unwrap();
            assert_eq!((ids, lens), (&[1, 2][..], &[2, 2][..]));
        });
    }

    #[test]
    fn long_words_are_not_cached() {
        let mut cache = WordCache::default();
        let word = vec![b'x'; MAX_WORD_LEN + 1];
        cache.insert(&word, &[1], &[word.len() as u32]);
        assert!(cache.get(&word).is_none());
    }
}
