//! The classical compressors, run as the processes people would run, so their numbers
//! are what a user of those tools gets (process start-up included).

use super::BenchError;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// One command-line compressor: how to compress stdin to stdout, and back.
#[derive(Clone, Debug)]
pub struct External {
    /// The name in tables and plots: the command as typed.
    pub name: &'static str,
    pub program: &'static str,
    pub compress: &'static [&'static str],
    pub decompress: &'static [&'static str],
}

/// The compressors issue 7 compares against, at their strongest usual settings.
pub const EXTERNALS: &[External] = &[
    External {
        name: "gzip -9",
        program: "gzip",
        compress: &["-9", "-c"],
        decompress: &["-d", "-c"],
    },
    External {
        name: "bzip2 -9",
        program: "bzip2",
        compress: &["-9", "-c"],
        decompress: &["-d", "-c"],
    },
    External {
        name: "xz -9e",
        program: "xz",
        compress: &["-9e", "-c"],
        decompress: &["-d", "-c"],
    },
    External {
        name: "zstd -19 --long",
        program: "zstd",
        compress: &["-q", "-19", "--long", "-c"],
        decompress: &["-q", "-d", "--long", "-c"],
    },
    External {
        name: "brotli -q 11",
        program: "brotli",
        compress: &["-q", "11", "-c"],
        decompress: &["-d", "-c"],
    },
];

/// The full path of `program` on `$PATH`, if it is installed.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The first line the program prints for `--version` (bzip2 prints it on stderr).
pub fn version(program: &Path) -> Option<String> {
    let out = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = [out.stdout, out.stderr].concat();
    String::from_utf8_lossy(&text)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

/// Runs `program args < input > output` once.
pub fn run_once(
    program: &Path,
    args: &[&str],
    input: &Path,
    output: &Path,
    stderr: &Path,
) -> Result<(), BenchError> {
    let what = || format!("{} {}", program.display(), args.join(" "));
    let io = |e: std::io::Error| BenchError::Io {
        what: what(),
        source: e,
    };
    let status = Command::new(program)
        .args(args)
        .stdin(File::open(input).map_err(io)?)
        .stdout(File::create(output).map_err(io)?)
        .stderr(File::create(stderr).map_err(io)?)
        .status()
        .map_err(io)?;
    if !status.success() {
        let msg = std::fs::read_to_string(stderr).unwrap_or_default();
        return Err(BenchError::Tool {
            tool: what(),
            why: format!("{status}: {}", msg.trim()),
        });
    }
    Ok(())
}

/// Peak RSS in KiB of one more run of `program args < input > output`, measured by GNU
/// time (`/usr/bin/time -f %M`), or None without it. Not by our own wait4: a child's
/// ru_maxrss starts from the RSS of the process it was forked from, which here holds
/// the model; GNU time is a small process, so its child's peak is the tool's own.
pub fn peak_rss_kib(
    program: &Path,
    args: &[&str],
    input: &Path,
    output: &Path,
    scratch: &Path,
) -> Option<u64> {
    let time = ["/usr/bin/time", "/bin/time"]
        .iter()
        .map(Path::new)
        .find(|p| is_executable(p))?;
    let report = scratch.join("rss");
    let status = Command::new(time)
        .args(["-f", "%M", "-o"])
        .arg(&report)
        .arg(program)
        .args(args)
        .stdin(File::open(input).ok()?)
        .stdout(File::create(output).ok()?)
        .stderr(Stdio::null())
        .status()
        .ok()?;
    let text = std::fs::read_to_string(&report).ok()?;
    status.success().then_some(())?;
    text.lines().last()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_a_process_and_measures_its_peak_rss() {
        let dir = tempfile::tempdir().unwrap();
        let (i, o, e) = (
            dir.path().join("i"),
            dir.path().join("o"),
            dir.path().join("e"),
        );
        std::fs::write(&i, b"hello").unwrap();
        let cat = find_program("cat").expect("cat on PATH");
        run_once(&cat, &[], &i, &o, &e).unwrap();
        assert_eq!(std::fs::read(&o).unwrap(), b"hello");
        // GNU time is in scripts/install-deps.sh; a child of this (small) test process
        // must not report a large peak.
        if let Some(rss) = peak_rss_kib(&cat, &[], &i, &o, dir.path()) {
            assert!(rss > 0 && rss < 64 * 1024, "{rss}");
        }
    }

    #[test]
    fn a_failing_process_is_an_error_with_its_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let (i, o, e) = (
            dir.path().join("i"),
            dir.path().join("o"),
            dir.path().join("e"),
        );
        std::fs::write(&i, b"not gzip").unwrap();
        let Some(gzip) = find_program("gzip") else {
            return;
        };
        let err = run_once(&gzip, &["-d", "-c"], &i, &o, &e)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("exit status: 1") && err.contains("not in gzip format"),
            "{err}"
        );
    }

    #[test]
    fn missing_programs_are_not_found() {
        assert!(find_program("no-such-compressor-xyz").is_none());
    }
}
