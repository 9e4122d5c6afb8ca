//! Replaying a committed fuzz corpus as plain tests: the seed check, the corpus replay and the
//! crash-artifact replay every `*_corpus.rs` test file runs for its target.

use std::fs;
use std::path::{Path, PathBuf};

/// A fuzz target's committed inputs under `fuzz/`.
#[derive(Clone, Copy, Debug)]
pub struct Corpus {
    /// The target's directory name under `fuzz/corpus` and `fuzz/artifacts`.
    pub target: &'static str,
    /// The environment variable that makes [`Corpus::check_seeds`] (re)write the seeds.
    pub write_var: &'static str,
}

impl Corpus {
    /// `fuzz/<sub>/<target>`.
    #[must_use]
    pub fn dir(&self, sub: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz")
            .join(sub)
            .join(self.target)
    }

    /// Every regular file in `fuzz/<sub>/<target>`, sorted by name (see [`files_in`]).
    #[must_use]
    pub fn files(&self, sub: &str) -> Vec<PathBuf> {
        files_in(&self.dir(sub))
    }

    /// Checks that every seed (at least `min`) is committed unchanged; with `write_var` set,
    /// writes them first.
    ///
    /// # Panics
    ///
    /// On a missing or outdated seed, or too few seeds.
    pub fn check_seeds(&self, seeds: Vec<(String, Vec<u8>)>, min: usize) {
        let dir = self.dir("corpus");
        if std::env::var_os(self.write_var).is_some() {
            fs::create_dir_all(&dir).expect("create the corpus directory");
            for (name, bytes) in &seeds {
                fs::write(dir.join(name), bytes).expect("write a seed");
            }
        }
        assert!(seeds.len() >= min, "a few dozen seeds");
        for (name, bytes) in seeds {
            let on_disk = fs::read(dir.join(&name)).unwrap_or_default();
            assert!(
                on_disk == bytes,
                "seed {name} missing or outdated in {}; rerun with {}=1",
                dir.display(),
                self.write_var
            );
        }
    }

    /// Replays the committed corpus (at least `min` files) through `body`.
    ///
    /// # Panics
    ///
    /// If the corpus is missing, or on the first input `body` panics on.
    pub fn replay_corpus(&self, min: usize, body: impl Fn(&[u8])) {
        let corpus = self.files("corpus");
        assert!(corpus.len() >= min, "the seed corpus is missing");
        for path in &corpus {
            replay(path, &body);
        }
    }

    /// Replays the crash artifacts (minimised crashes from cargo fuzz; each must pass once
    /// committed) through `body`.
    ///
    /// # Panics
    ///
    /// On the first artifact `body` panics on.
    pub fn replay_artifacts(&self, body: impl Fn(&[u8])) {
        for path in self.files("artifacts") {
            replay(&path, &body);
        }
    }
}

/// Every regular file in `dir` (none if it does not exist), sorted by name.
#[must_use]
pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

/// Runs `body` on the file at `path`.
///
/// # Panics
///
/// If the file cannot be read, or `body` panics on it.
pub fn replay(path: &Path, body: impl Fn(&[u8])) {
    let data = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&data)));
    assert!(
        r.is_ok(),
        "fuzz input {} fails (see the panic above)",
        path.display()
    );
}
