//! The inode table: our inode numbers, the backing file each one is, its links, and
//! the bookkeeping that commit safety depends on.
//!
//! A node is found by its backing file's `(dev, ino)`, so every hard link of a file is
//! the same node; each node records its links as `(parent, name)` pairs, and paths are
//! rebuilt by walking parents, so renaming a directory moves its whole subtree at once.
//! Our inode numbers are our own and stay fixed when a file's content is replaced
//! (compression and decompression rename a new backing inode over the old one; the
//! node is re-bound to it with [`Table::rebind`]).
//!
//! A compression commits only if the node's generation is unchanged since it started:
//! every modification goes through [`Table::modified`] (content) or
//! [`Table::meta_changed`] (metadata), which bump it, so no site can forget.

use super::content::Content;
use super::types::{Ino, Kind, ROOT_INO, STATUS_INO};
use crate::error::{FsError, FsResult};
use crate::store::Stat;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

/// A backing file's `(dev, ino)`.
pub(super) type BackingId = (u64, u64);

/// One inode of the mount.
pub(super) struct Node {
    pub kind: Kind,
    /// `(parent, name)` of every known link; empty once unlinked.
    pub links: Vec<(Ino, OsString)>,
    pub id: BackingId,
    /// Lookups the kernel holds (released by `forget`).
    pub lookups: u64,
    pub opens: u32,
    pub writers: u32,
    /// Bumped by every modification; a compression commits only if it is unchanged.
    gen: u64,
    /// Modified since it was last compressed.
    dirty: bool,
    /// Created in this mount and not yet fsynced: its directory entry may not be on
    /// disk yet, so the first fsync also syncs the directory.
    pub fresh: bool,
    /// Compressions that failed since it last changed (for the retry backoff).
    pub failures: u32,
    /// The last one failed for want of space (its retry first checks there is room).
    pub no_space: bool,
    /// What every open handle reads and writes (see [`Content`]); `None` when closed.
    pub content: Option<Content>,
}

impl Node {
    fn new(kind: Kind, id: BackingId, links: Vec<(Ino, OsString)>) -> Node {
        Node {
            kind,
            links,
            id,
            lookups: 0,
            opens: 0,
            writers: 0,
            gen: 0,
            dirty: false,
            fresh: false,
            failures: 0,
            no_space: false,
            content: None,
        }
    }

    /// The generation, to compare after slow work: unchanged means unmodified.
    pub fn gen(&self) -> u64 {
        self.gen
    }

    /// Modified since it was last compressed.
    pub fn dirty(&self) -> bool {
        self.dirty
    }

    /// Whether it has no name any more (unlinked while open).
    pub fn is_orphan(&self) -> bool {
        self.links.is_empty()
    }

    /// Ready for a compressor: changed, no handle can write, and still has a name.
    pub fn wants_compression(&self) -> bool {
        self.writers == 0 && self.dirty && !self.links.is_empty()
    }

    /// Lets go of the content if no handle holds it ([`Content::let_go`]).
    pub fn let_go_if_closed(&mut self) {
        if self.opens == 0 {
            if let Some(c) = self.content.take() {
                c.let_go();
            }
        }
    }
}

/// Every node the kernel or a compressor can reach.
pub(super) struct Table {
    nodes: HashMap<Ino, Node>,
    by_id: HashMap<BackingId, Ino>,
    next: Ino,
}

impl Table {
    /// A table holding only the root, backed by `root`.
    pub fn new(root: BackingId) -> Table {
        let mut root_node = Node::new(Kind::Dir, root, Vec::new());
        root_node.lookups = 1;
        Table {
            nodes: HashMap::from([(ROOT_INO, root_node)]),
            by_id: HashMap::from([(root, ROOT_INO)]),
            next: STATUS_INO + 1,
        }
    }

    pub fn get(&self, ino: Ino) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    /// Whether node `ino` is still what a compression started from: generation `gen`
    /// and backing inode `id`, linked, with no writer. A compression commits (or keeps
    /// the file plain) only while this holds.
    pub fn unchanged(&self, ino: Ino, gen: u64, id: (u64, u64)) -> bool {
        self.get(ino)
            .is_some_and(|n| n.gen() == gen && n.writers == 0 && !n.is_orphan() && n.id == id)
    }

    pub fn get_mut(&mut self, ino: Ino) -> Option<&mut Node> {
        self.nodes.get_mut(&ino)
    }

    /// The node, or ENOENT.
    pub fn node(&self, ino: Ino) -> FsResult<&Node> {
        self.nodes.get(&ino).ok_or_else(noent)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// The content changed: bumps the generation (a compression in flight will not
    /// commit) and marks the node for compression.
    pub fn modified(&mut self, ino: Ino) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.gen += 1;
            n.dirty = true;
            n.failures = 0;
            n.no_space = false;
        }
    }

    /// Only metadata changed (mode, owner, times, xattrs): bumps the generation,
    /// because a compression in flight would install a blob with the old metadata.
    pub fn meta_changed(&mut self, ino: Ino) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.gen += 1;
        }
    }

    /// Needs compressing although this mount did not change it (recovery, a
    /// compression that did not commit).
    pub fn mark_dirty(&mut self, ino: Ino) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.dirty = true;
        }
    }

    /// Nothing to compress: compressed, or left plaintext for good (until it changes).
    pub fn mark_clean(&mut self, ino: Ino) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.dirty = false;
        }
    }

    /// The node's content is now the backing file `new` (a rename installed it).
    pub fn rebind(&mut self, ino: Ino, new: BackingId) {
        let Some(n) = self.nodes.get_mut(&ino) else {
            return;
        };
        let old = std::mem::replace(&mut n.id, new);
        let named = !n.links.is_empty();
        if self.by_id.get(&old) == Some(&ino) {
            self.by_id.remove(&old);
        }
        if named {
            self.by_id.insert(new, ino);
        }
    }

    /// The node of the entry `name` in `parent` described by `md`, created (without
    /// lookup counts) if it is new; the link is recorded.
    pub fn node_for(&mut self, parent: Ino, name: &OsStr, md: &Stat) -> Ino {
        let id = md.id();
        if let Some(&ino) = self.by_id.get(&id) {
            if let Some(n) = self.nodes.get_mut(&ino) {
                if !n.links.iter().any(|(p, nm)| *p == parent && nm == name) {
                    n.links.push((parent, name.to_owned()));
                }
                n.kind = Kind::of(md);
                return ino;
            }
        }
        let ino = self.next;
        self.next += 1;
        self.nodes.insert(
            ino,
            Node::new(Kind::of(md), id, vec![(parent, name.to_owned())]),
        );
        self.by_id.insert(id, ino);
        ino
    }

    /// The node's path relative to the root, through its first link.
    pub fn rel_path(&self, ino: Ino) -> FsResult<PathBuf> {
        let mut parts = Vec::new();
        let mut cur = ino;
        while cur != ROOT_INO {
            let n = self.nodes.get(&cur).ok_or_else(noent)?;
            let (p, name) = n.links.first().ok_or_else(noent)?;
            parts.push(name.as_os_str());
            cur = *p;
            if parts.len() > 4096 {
                return Err(FsError::refused(libc::ELOOP, "path too deep or cyclic"));
            }
        }
        Ok(parts.iter().rev().collect())
    }

    /// Drops a node nobody can reach any more.
    pub fn maybe_remove(&mut self, ino: Ino) {
        let gone = self
            .nodes
            .get(&ino)
            .is_some_and(|n| n.links.is_empty() && n.opens == 0 && n.lookups == 0);
        if gone && ino != ROOT_INO {
            if let Some(n) = self.nodes.remove(&ino) {
                if self.by_id.get(&n.id) == Some(&ino) {
                    self.by_id.remove(&n.id);
                }
            }
        }
    }

    /// Removes link `(parent, name)` of the node with backing id `id`; `nlink` is the
    /// backing link count before the removal.
    pub fn drop_link(&mut self, id: BackingId, parent: Ino, name: &OsStr, nlink: u64) {
        let Some(&ino) = self.by_id.get(&id) else {
            return;
        };
        let Some(n) = self.nodes.get_mut(&ino) else {
            return;
        };
        n.links.retain(|(p, nm)| !(*p == parent && nm == name));
        if nlink <= 1 {
            n.links.clear();
        }
        if n.links.is_empty() {
            // Unreachable by any name we know: an orphan, alive while open.
            self.by_id.remove(&id);
            self.maybe_remove(ino);
        }
    }

    /// Adds link `(parent, name)` to a node (a hard link was made).
    pub fn add_link(&mut self, ino: Ino, parent: Ino, name: &OsStr) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.links.push((parent, name.to_owned()));
        }
    }

    /// The backing file `id` moved from `from` to `to`: that is now its first link
    /// (the one paths go through), and `from` is gone; so is any link recorded at `to`.
    pub fn relink(&mut self, id: BackingId, from: (Ino, &OsStr), to: (Ino, &OsStr)) {
        if let Some(n) = self
            .by_id
            .get(&id)
            .copied()
            .and_then(|i| self.nodes.get_mut(&i))
        {
            n.links.retain(|(p, nm)| !(*p == from.0 && nm == from.1));
            n.links.retain(|(p, nm)| !(*p == to.0 && nm == to.1));
            n.links.insert(0, (to.0, to.1.to_owned()));
        }
    }

    /// After `RENAME_EXCHANGE`: the backing file `id`, which was at `was`, is at `now`.
    pub fn exchanged(&mut self, id: BackingId, was: (Ino, &OsStr), now: (Ino, &OsStr)) {
        if let Some(n) = self
            .by_id
            .get(&id)
            .copied()
            .and_then(|i| self.nodes.get_mut(&i))
        {
            n.links.retain(|(p, nm)| !(*p == was.0 && nm == was.1));
            n.links.insert(0, (now.0, now.1.to_owned()));
        }
    }
}

/// ENOENT for an inode or entry that does not exist.
pub(super) fn noent() -> FsError {
    FsError::refused(libc::ENOENT, "no such inode or entry")
}
