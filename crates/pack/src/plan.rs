//! Which shard does what: the sorted entries of a tree and their deterministic
//! assignment to shards.
//!
//! Every shard computes the plan on its own, so it must come out the same everywhere:
//! entries are sorted by the bytes of their relative paths (not by locale, not by
//! `Path`'s component order), and the assignment is a pure function of (path, size)
//! pairs. The plan's digest goes into every shard's manifest, so merging catches shards
//! that saw different trees.
//!
//! Assignment (greedy "longest processing time first"): entries are taken by weight,
//! largest first (ties by path), and each goes to the shard with the fewest bytes so far
//! (ties by lowest index). An entry weighs its size plus one, so empty files and
//! symlinks spread over the shards too. Any two shards then differ by at most one
//! entry's weight.

use super::PackError;
use sha2::{Digest, Sha256};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What a tree item is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemKind {
    /// A regular file.
    File,
    /// A symlink.
    Symlink,
}

/// A file or symlink of the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// Relative to the tree's root.
    pub rel: PathBuf,
    /// What it is.
    pub kind: ItemKind,
    /// Bytes (a symlink: of its target).
    pub size: u64,
}

impl Item {
    /// What the assignment balances.
    pub fn weight(&self) -> u64 {
        self.size.saturating_add(1)
    }
}

/// A walked tree: every directory (parents before children) and every file and symlink,
/// both in path-byte order.
#[derive(Clone, Debug, Default)]
pub struct Tree {
    /// Every directory, parents first.
    pub dirs: Vec<PathBuf>,
    /// Every file and symlink, sorted.
    pub items: Vec<Item>,
    /// Entries left out (sockets, FIFOs, devices, a root-level `.nacrithfs`) and why.
    pub skipped: Vec<(PathBuf, &'static str)>,
}

fn bytes(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

/// Walks `root` without following symlinks. `internal` names a root-level entry that
/// is never part of the tree (the backing directory's `.nacrithfs`).
pub fn walk(root: &Path, internal: Option<&str>) -> Result<Tree, PackError> {
    let mut tree = Tree::default();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let rd = std::fs::read_dir(&dir).map_err(PackError::io(&dir))?;
        for e in rd {
            let e = e.map_err(PackError::io(&dir))?;
            let child = rel.join(e.file_name());
            if rel.as_os_str().is_empty() && internal.is_some_and(|n| e.file_name() == n) {
                tree.skipped.push((child, "reserved name at the root"));
                continue;
            }
            let path = root.join(&child);
            let md = std::fs::symlink_metadata(&path).map_err(PackError::io(&path))?;
            let ft = md.file_type();
            if ft.is_dir() {
                stack.push(child.clone());
                tree.dirs.push(child);
            } else if ft.is_file() {
                tree.items.push(Item {
                    rel: child,
                    kind: ItemKind::File,
                    size: md.len(),
                });
            } else if ft.is_symlink() {
                tree.items.push(Item {
                    rel: child,
                    kind: ItemKind::Symlink,
                    size: md.len(),
                });
            } else {
                tree.skipped
                    .push((child, "not a regular file, directory or symlink"));
            }
        }
    }
    // Byte order puts "a" before "a/b" (a prefix sorts first), so parents precede children.
    tree.dirs.sort_by(|a, b| bytes(a).cmp(bytes(b)));
    tree.items.sort_by(|a, b| bytes(&a.rel).cmp(bytes(&b.rel)));
    tree.skipped.sort_by(|a, b| bytes(&a.0).cmp(bytes(&b.0)));
    Ok(tree)
}

/// The shard of each weight (see the module docs), for weights listed in path order.
pub fn assign(weights: &[u64], shards: u32) -> Vec<u32> {
    let shards = shards.max(1);
    let mut order: Vec<usize> = (0..weights.len()).collect();
    // Stable sort: equal weights keep path order.
    order.sort_by_key(|&i| Reverse(weights[i]));
    let mut loads: BinaryHeap<Reverse<(u128, u32)>> =
        (0..shards).map(|s| Reverse((0u128, s))).collect();
    let mut out = vec![0u32; weights.len()];
    for i in order {
        let Some(Reverse((load, s))) = loads.pop() else {
            break;
        };
        out[i] = s;
        loads.push(Reverse((load + weights[i] as u128, s)));
    }
    out
}

/// The items of `tree` that belong to `shard`, in path order.
pub fn shard_items(items: &[Item], shard: super::Shard) -> Vec<Item> {
    let weights: Vec<u64> = items.iter().map(Item::weight).collect();
    let a = assign(&weights, shard.count);
    items
        .iter()
        .zip(a)
        .filter(|(_, s)| *s == shard.index)
        .map(|(i, _)| i.clone())
        .collect()
}

/// A digest of the (path, kind, size) list the assignment was computed from.
pub fn digest(items: &[Item]) -> String {
    let mut h = Sha256::new();
    for i in items {
        h.update((bytes(&i.rel).len() as u64).to_le_bytes());
        h.update(bytes(&i.rel));
        h.update([matches!(i.kind, ItemKind::Symlink) as u8]);
        h.update(i.size.to_le_bytes());
    }
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Shard;
    use proptest::prelude::*;

    #[test]
    fn lpt_example() {
        // Largest first, each to the lightest shard, ties to the lowest index.
        assert_eq!(assign(&[5, 9, 1, 9, 3], 2), vec![0, 0, 1, 1, 1]);
        assert_eq!(assign(&[1, 1, 1], 1), vec![0, 0, 0]);
        assert_eq!(assign(&[1, 1, 1, 1], 3), vec![0, 1, 2, 0]);
        assert!(assign(&[], 4).is_empty());
    }

    #[test]
    fn walk_sorts_by_bytes_and_skips_the_internal_dir() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for p in ["a-b", "a/b", "a/c/d", ".nacrithfs/tmp/x", "Z"] {
            let p = r.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, p.to_str().unwrap()).unwrap();
        }
        std::os::unix::fs::symlink("a-b", r.join("link")).unwrap();
        std::fs::create_dir(r.join("empty")).unwrap();
        let t = walk(r, Some(".nacrithfs")).unwrap();
        let rels: Vec<_> = t.items.iter().map(|i| i.rel.to_str().unwrap()).collect();
        assert_eq!(rels, ["Z", "a-b", "a/b", "a/c/d", "link"]);
        assert_eq!(t.items[4].kind, ItemKind::Symlink);
        assert_eq!(t.items[4].size, 3);
        let dirs: Vec<_> = t.dirs.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(dirs, ["a", "a/c", "empty"]);
        assert_eq!(t.skipped.len(), 1);
        assert_eq!(walk(r, None).unwrap().items.len(), 6);
    }

    fn items() -> impl Strategy<Value = Vec<Item>> {
        proptest::collection::btree_map("[a-c]{1,3}(/[a-c]{1,2})?", 0u64..5000, 0..60).prop_map(
            |m| {
                m.into_iter()
                    .map(|(p, size)| Item {
                        rel: PathBuf::from(p),
                        kind: ItemKind::File,
                        size,
                    })
                    .collect()
            },
        )
    }

    proptest! {
        #[test]
        fn every_item_in_exactly_one_shard(items in items(), n in 1u32..7) {
            let shards: Vec<Vec<Item>> = (0..n).map(|i| shard_items(&items, Shard { index: i, count: n })).collect();
            let mut all: Vec<&Item> = shards.iter().flatten().collect();
            prop_assert_eq!(all.len(), items.len());
            all.sort_by(|a, b| bytes(&a.rel).cmp(bytes(&b.rel)));
            all.dedup_by(|a, b| a.rel == b.rel);
            prop_assert_eq!(all.len(), items.len());
        }

        #[test]
        fn deterministic_and_balanced(items in items(), n in 1u32..7) {
            let w: Vec<u64> = items.iter().map(Item::weight).collect();
            let a = assign(&w, n);
            prop_assert_eq!(&a, &assign(&w, n));
            prop_assert!(a.iter().all(|&s| s < n));
            let mut loads = vec![0u64; n as usize];
            for (s, w) in a.iter().zip(&w) {
                loads[*s as usize] += w;
            }
            let (max, min) = (*loads.iter().max().unwrap(), *loads.iter().min().unwrap());
            prop_assert!(max - min <= w.iter().copied().max().unwrap_or(0), "loads {:?}", loads);
        }

        #[test]
        fn digest_tracks_the_list(items in items()) {
            prop_assert_eq!(digest(&items), digest(&items.clone()));
            if let Some(first) = items.first() {
                let mut changed = items.clone();
                changed[0].size = first.size + 1;
                prop_assert_ne!(digest(&items), digest(&changed));
            }
        }
    }
}
