//! Packing a corpus: `nacrithfs pack`, `unpack`, `verify` and `merge-manifests`.
//!
//! Compressing one file does not depend on any other, so a corpus is cut into shards
//! that separate processes (Kubernetes Indexed Job pods, Slurm array tasks) run on
//! separate machines over a shared directory. Nothing coordinates them: every shard
//! walks the same tree, sorts it the same way and computes the same assignment
//! ([`plan`]), then does only its own files. A shard writes blobs exactly as the mount
//! does (same path, blob marker xattr, atomic rename; see `nacrithfs_fs::store::backing`), so
//! the destination is a backing directory ready to mount.
//!
//! Restarting is the normal way to recover: a file whose destination already holds a
//! blob of the same length and CRC-32C is skipped without running the model, and every
//! write is a rename of a complete temporary file, so a shard killed at any point and run
//! again loses nothing and duplicates nothing. A shard's manifest ([`manifest`]) appears
//! only when all of its files are done; `merge-manifests` refuses to merge until every
//! shard's is there.

pub mod manifest;
pub mod plan;
mod progress;
mod run;
mod staging;

pub use manifest::{merge, Entry, EntryKind, MergeSummary};
pub use plan::{assign, Item, ItemKind, Tree};
pub use run::{pack, unpack, verify, PackOptions, Report, VerifyOptions};

use nacrithfs_engine::model::{ModelError, ModelOptions};
use nacrithfs_engine::{Engine, EngineSet};
use nc06::format::Blob;
use std::cell::OnceCell;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;

/// What can go wrong while packing, unpacking, verifying or merging, with the path it
/// concerns.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// A source file or tree that cannot be read.
    #[error("{}: {source}", .path.display())]
    NoInput {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Other I/O on `path`.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file that cannot be compressed or a blob that cannot be decoded.
    #[error("{}: {source}", .path.display())]
    Codec {
        /// The file.
        path: PathBuf,
        /// Why.
        source: nacrithfs_engine::Error,
    },
    /// A file whose windowed compression or decoding failed in the codec, at `what`
    /// (which bytes).
    #[error("{}: {what}: {source}", .path.display())]
    Coding {
        /// The file.
        path: PathBuf,
        /// What was being done.
        what: String,
        /// Why.
        source: nacrithfs_engine::Error,
    },
    /// The model cannot be loaded.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Content that decodes but is not what the manifest (or the source) says.
    #[error("{}: {why}", .path.display())]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// What differs.
        why: String,
    },
    /// A manifest line that does not parse.
    #[error("{}, line {line}: {why}", .path.display())]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// Its line, from 1.
        line: usize,
        /// What is wrong with it.
        why: String,
    },
    /// Writing into the destination tree failed.
    #[error("{}", .0.report())]
    Store(#[from] nacrithfs_fs::FsError),
    /// Shards whose manifests are missing: they have not finished (yet).
    #[error("{0}")]
    Incomplete(String),
    /// Some files of a shard failed; the others are done. Rerunning the shard retries
    /// only the failed ones.
    #[error("{op} shard {shard}: {failed} of {total} files failed{}; first: {first}", if *.op == "verify" { "" } else { " (rerun the shard to retry them)" })]
    Failed {
        /// `pack`, `unpack` or `verify`.
        op: &'static str,
        /// The shard.
        shard: Shard,
        /// Files that failed.
        failed: usize,
        /// Files the shard has.
        total: usize,
        /// The first failure.
        first: Box<PackError>,
    },
}

impl PackError {
    /// A failure of a windowed compression or decoding of `path`: the codec's own
    /// error when one is behind it (so a bad blob is a data error, as when it is
    /// decoded whole), a store error otherwise.
    pub(crate) fn coding(path: &std::path::Path, e: nacrithfs_fs::FsError) -> PackError {
        let codec = std::error::Error::source(&e)
            .is_some_and(|s| s.downcast_ref::<nacrithfs_engine::Error>().is_some());
        if !codec {
            return PackError::Store(e.in_file(path.display()));
        }
        let what = e.message().to_string();
        match e
            .into_source()
            .map(|s| s.downcast::<nacrithfs_engine::Error>())
        {
            Some(Ok(source)) => PackError::Coding {
                path: path.to_path_buf(),
                what,
                source: *source,
            },
            _ => PackError::Mismatch {
                path: path.to_path_buf(),
                why: what,
            },
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> PackError {
        let path = path.into();
        move |source| PackError::Io { path, source }
    }
}

/// One shard of N: `index` counts from 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shard {
    /// This shard, from 0.
    pub index: u32,
    /// Shards in all.
    pub count: u32,
}

impl Shard {
    /// The whole tree in one process.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Shard `index` of `count`; an error if `index >= count` or `count` is 0.
    pub fn new(index: u32, count: u32) -> Result<Shard, String> {
        if count == 0 {
            return Err("the number of shards must be at least 1".into());
        }
        if index >= count {
            return Err(format!(
                "shard index {index} is out of range 0..{count} (indexes count from 0)"
            ));
        }
        Ok(Shard { index, count })
    }

    /// The file-name part that identifies this shard, e.g. `2-of-8`.
    pub fn tag(&self) -> String {
        format!("{}-of-{}", self.index, self.count)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = String;
    /// Parses `I/N`.
    fn from_str(s: &str) -> Result<Shard, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected I/N, e.g. 0/4"))?;
        let num = |x: &str| {
            x.trim()
                .parse::<u32>()
                .map_err(|_| format!("{s:?}: expected I/N with whole numbers, e.g. 0/4"))
        };
        Shard::new(num(i)?, num(n)?)
    }
}

/// Environment variable with the number of shards, for schedulers that give only an
/// index (a Kubernetes Indexed Job exports `JOB_COMPLETION_INDEX` but not its
/// completions count).
pub const SHARDS_ENV: &str = "NACRITHFS_SHARDS";

/// Where this process's shard came from, for the log.
pub fn resolve_shard(
    flag: Option<Shard>,
    shards: Option<u32>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(Shard, &'static str), PackError> {
    let usage = PackError::Usage;
    if let Some(s) = flag {
        if shards.is_some_and(|n| n != s.count) {
            return Err(usage(format!(
                "--shard {s} contradicts --shards {}",
                shards.unwrap_or(0)
            )));
        }
        return Ok((s, "--shard"));
    }
    let number = |name: &str, v: String| -> Result<u32, PackError> {
        v.trim()
            .parse::<u32>()
            .map_err(|_| usage(format!("${name}={v:?} is not a whole number")))
    };
    let count_from_env = |fallback: Option<(&str, String)>| -> Result<Option<u32>, PackError> {
        if let Some(n) = shards {
            return Ok(Some(n));
        }
        if let Some(v) = env(SHARDS_ENV) {
            return number(SHARDS_ENV, v).map(Some);
        }
        match fallback {
            Some((name, v)) => number(name, v).map(Some),
            None => Ok(None),
        }
    };
    if let Some(v) = env("JOB_COMPLETION_INDEX") {
        let index = number("JOB_COMPLETION_INDEX", v)?;
        let count = count_from_env(None)?.ok_or_else(|| {
            usage(format!("JOB_COMPLETION_INDEX is set but not the number of shards: set ${SHARDS_ENV} to the Job's completions (or pass --shards)"))
        })?;
        return Shard::new(index, count)
            .map(|s| (s, "JOB_COMPLETION_INDEX"))
            .map_err(usage);
    }
    if let Some(v) = env("SLURM_ARRAY_TASK_ID") {
        let id = number("SLURM_ARRAY_TASK_ID", v)?;
        if let Some(step) = env("SLURM_ARRAY_TASK_STEP") {
            if number("SLURM_ARRAY_TASK_STEP", step)? != 1 {
                return Err(usage(
                    "Slurm array with a step: use a contiguous array such as --array=0-7".into(),
                ));
            }
        }
        let min = match env("SLURM_ARRAY_TASK_MIN") {
            Some(m) => number("SLURM_ARRAY_TASK_MIN", m)?,
            None => 0,
        };
        let index = id.checked_sub(min).ok_or_else(|| {
            usage(format!(
                "SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}"
            ))
        })?;
        let count = count_from_env(env("SLURM_ARRAY_TASK_COUNT").map(|v| ("SLURM_ARRAY_TASK_COUNT", v)))?
            .ok_or_else(|| usage(format!("SLURM_ARRAY_TASK_ID is set but not SLURM_ARRAY_TASK_COUNT: set ${SHARDS_ENV} (or pass --shards)")))?;
        return Shard::new(index, count)
            .map(|s| (s, "SLURM_ARRAY_TASK_ID"))
            .map_err(usage);
    }
    match shards {
        Some(n) if n > 1 => Err(usage(format!(
            "--shards {n} needs this process's index: --shard I/{n}, or JOB_COMPLETION_INDEX / SLURM_ARRAY_TASK_ID in the environment"
        ))),
        Some(0) => Err(usage("the number of shards must be at least 1".into())),
        _ => Ok((Shard::ALL, "default (no shard given)")),
    }
}

/// The engine, loaded on first use: a rerun that finds everything done, or a tree of
/// binary files only, never waits for the model. Blobs of another cached model decode
/// with that model ([`EngineSet`]).
pub struct LazyEngine<'a> {
    load: Box<dyn Fn() -> Result<Engine, ModelError> + 'a>,
    options: ModelOptions,
    cell: OnceCell<EngineSet>,
}

impl<'a> LazyEngine<'a> {
    /// An engine that `load` makes on first use; other models load with `options`.
    pub fn new(load: impl Fn() -> Result<Engine, ModelError> + 'a, options: ModelOptions) -> Self {
        LazyEngine {
            load: Box::new(load),
            options,
            cell: OnceCell::new(),
        }
    }

    fn set(&self) -> Result<&EngineSet, ModelError> {
        if let Some(s) = self.cell.get() {
            return Ok(s);
        }
        let e = (self.load)()?;
        let set = EngineSet::new(std::sync::Arc::new(e), self.options.clone());
        Ok(self.cell.get_or_init(|| set))
    }

    /// The engine, loading it the first time.
    pub fn get(&self) -> Result<&Engine, ModelError> {
        Ok(self.set()?.default_engine())
    }

    /// The engine that decodes `blob`: its own model when that is cached, else the
    /// default (which refuses a blob of another model with an error naming it).
    pub fn decoder(&self, blob: &Blob) -> Result<std::sync::Arc<Engine>, ModelError> {
        Ok(self.set()?.decoder(blob))
    }

    /// The engine if it was loaded.
    pub fn loaded(&self) -> Option<&Engine> {
        self.cell.get().map(|s| &**s.default_engine())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn shard_parsing() {
        assert_eq!(
            "2/5".parse::<Shard>().unwrap(),
            Shard { index: 2, count: 5 }
        );
        assert!("5/5".parse::<Shard>().is_err());
        assert!("0/0".parse::<Shard>().is_err());
        assert!("1".parse::<Shard>().is_err());
        assert!("a/3".parse::<Shard>().is_err());
        assert_eq!(Shard { index: 1, count: 3 }.tag(), "1-of-3");
    }

    #[test]
    fn shard_from_flag_and_environment() {
        let none = env(&[]);
        assert_eq!(resolve_shard(None, None, &none).unwrap().0, Shard::ALL);
        assert_eq!(
            resolve_shard(Some(Shard { index: 1, count: 2 }), None, &none)
                .unwrap()
                .0,
            Shard { index: 1, count: 2 }
        );
        assert!(resolve_shard(Some(Shard { index: 1, count: 2 }), Some(3), &none).is_err());
        assert!(resolve_shard(None, Some(3), &none).is_err());
        // Kubernetes: the index from the Job, the count from us.
        let k8s = env(&[("JOB_COMPLETION_INDEX", "3"), ("NACRITHFS_SHARDS", "4")]);
        assert_eq!(
            resolve_shard(None, None, &k8s).unwrap(),
            (Shard { index: 3, count: 4 }, "JOB_COMPLETION_INDEX")
        );
        assert!(resolve_shard(None, None, env(&[("JOB_COMPLETION_INDEX", "3")])).is_err());
        assert_eq!(
            resolve_shard(None, Some(5), env(&[("JOB_COMPLETION_INDEX", "3")]))
                .unwrap()
                .0,
            Shard { index: 3, count: 5 }
        );
        assert!(resolve_shard(
            None,
            None,
            env(&[("JOB_COMPLETION_INDEX", "4"), ("NACRITHFS_SHARDS", "4")])
        )
        .is_err());
        // Slurm: 0-based arrays, 1-based arrays through TASK_MIN, steps refused.
        let slurm = env(&[
            ("SLURM_ARRAY_TASK_ID", "2"),
            ("SLURM_ARRAY_TASK_COUNT", "8"),
        ]);
        assert_eq!(
            resolve_shard(None, None, &slurm).unwrap(),
            (Shard { index: 2, count: 8 }, "SLURM_ARRAY_TASK_ID")
        );
        let one_based = env(&[
            ("SLURM_ARRAY_TASK_ID", "8"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "8"),
        ]);
        assert_eq!(
            resolve_shard(None, None, &one_based).unwrap().0,
            Shard { index: 7, count: 8 }
        );
        let stepped = env(&[
            ("SLURM_ARRAY_TASK_ID", "2"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
            ("SLURM_ARRAY_TASK_STEP", "2"),
        ]);
        assert!(resolve_shard(None, None, &stepped).is_err());
        assert!(resolve_shard(
            None,
            None,
            env(&[
                ("SLURM_ARRAY_TASK_ID", "x"),
                ("SLURM_ARRAY_TASK_COUNT", "8")
            ])
        )
        .is_err());
        // An explicit flag wins over the environment.
        assert_eq!(
            resolve_shard(Some(Shard::ALL), None, &k8s).unwrap().1,
            "--shard"
        );
    }
}
