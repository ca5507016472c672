//! A cache file read while it is written: the fill's leader writes the body and moves a
//! watermark; any number of readers stream the file up to it, and the rest once the leader says
//! the whole body passed its checks. A rejected or abandoned fill breaks every reader's stream
//! before its end, so no reader ever receives a complete body that was refused (the same promise
//! as the leader's own client, which gets all but the last chunk until the checks pass).
//!
//! Readers hold their own descriptor of the file, so the rename at commit, or the removal of a
//! rejected file, does not disturb them.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;

/// Bytes read from the file at a time.
const READ_CHUNK: usize = 256 * 1024;

/// How far the file can be read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mark {
    /// This many bytes are written, more may come.
    Partial(u64),
    /// The body is complete at this length and passed its checks.
    Complete(u64),
    /// The fill failed or was refused: why.
    Failed(String),
}

/// The leader's side. Dropping it without [`complete`](Self::complete) fails every reader.
#[derive(Debug)]
pub struct GrowingWriter {
    mark: watch::Sender<Mark>,
    reader: GrowingReader,
}

/// A reader's side: clone it per reader; [`stream`](Self::stream) reads from the start.
#[derive(Debug, Clone)]
pub struct GrowingReader {
    file: Arc<File>,
    mark: watch::Receiver<Mark>,
    /// The length the upstream declared, if it did.
    pub declared_len: Option<u64>,
}

/// How a fill that readers followed ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    Complete(u64),
    Failed(String),
}

impl GrowingWriter {
    /// Starts sharing `file` (a descriptor of the file being written; its first `written` bytes
    /// are already there).
    pub fn new(file: File, written: u64, declared_len: Option<u64>) -> Self {
        let (tx, rx) = watch::channel(Mark::Partial(written));
        GrowingWriter {
            mark: tx,
            reader: GrowingReader {
                file: Arc::new(file),
                mark: rx,
                declared_len,
            },
        }
    }

    /// A reader for followers.
    pub fn reader(&self) -> GrowingReader {
        self.reader.clone()
    }

    /// The first `written` bytes are in the file.
    pub fn advance(&self, written: u64) {
        self.mark.send_replace(Mark::Partial(written));
    }

    /// The body is complete at `len` bytes and passed: readers read to the end.
    pub fn complete(self, len: u64) {
        self.mark.send_replace(Mark::Complete(len));
    }

    /// The fill failed: readers' streams break with `why`.
    pub fn fail(self, why: String) {
        self.mark.send_replace(Mark::Failed(why));
    }
}

impl Drop for GrowingWriter {
    fn drop(&mut self) {
        self.mark.send_if_modified(|m| match m {
            Mark::Partial(_) => {
                *m = Mark::Failed("the cache fill ended without an outcome".into());
                true
            }
            _ => false,
        });
    }
}

impl GrowingReader {
    /// Waits for the fill's end, reading nothing.
    pub async fn ended(mut self) -> Ended {
        let ended = self
            .mark
            .wait_for(|m| !matches!(m, Mark::Partial(_)))
            .await
            .map(|m| m.clone());
        match ended {
            Ok(Mark::Complete(n)) => Ended::Complete(n),
            Ok(Mark::Failed(why)) => Ended::Failed(why),
            _ => Ended::Failed("the cache fill ended without an outcome".into()),
        }
    }

    /// The file from its start: chunks as they are written, the end once the body passed, an
    /// error (after what was written) if it did not.
    pub fn stream(
        self,
    ) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static {
        futures_util::stream::unfold(Some((self, 0u64)), |state| async move {
            let (mut reader, offset) = state?;
            loop {
                let mark = reader.mark.borrow_and_update().clone();
                let (available, complete) = match mark {
                    Mark::Partial(n) => (n, false),
                    Mark::Complete(n) => (n, true),
                    Mark::Failed(why) => return Some((Err(std::io::Error::other(why)), None)),
                };
                if offset < available {
                    let want = (available - offset).min(READ_CHUNK as u64) as usize;
                    let file = reader.file.clone();
                    let read = tokio::task::spawn_blocking(move || read_at(&file, offset, want))
                        .await
                        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
                    return Some(match read {
                        Ok(data) => {
                            let next = offset + data.len() as u64;
                            (Ok(data), Some((reader, next)))
                        }
                        Err(e) => (Err(e), None),
                    });
                }
                if complete {
                    return None;
                }
                if reader.mark.changed().await.is_err() {
                    // The writer is gone; its last mark (read above) said more was to come.
                    let why = "the cache fill ended without an outcome";
                    return Some((Err(std::io::Error::other(why)), None));
                }
            }
        })
    }
}

/// Exactly `want` bytes at `offset` (they are written: the watermark says so).
fn read_at(file: &File, offset: u64, want: usize) -> std::io::Result<Bytes> {
    let mut buf = BytesMut::zeroed(want);
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt as _;
    use std::io::Write as _;

    fn temp() -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join("f"))
            .unwrap();
        (dir, file)
    }

    #[tokio::test]
    async fn readers_get_what_is_written_before_the_end_and_all_of_it_after() {
        let (_dir, mut file) = temp();
        file.write_all(b"hello ").unwrap();
        let writer = GrowingWriter::new(file.try_clone().unwrap(), 6, None);
        let mut early = Box::pin(writer.reader().stream());
        assert_eq!(early.next().await.unwrap().unwrap(), &b"hello "[..]);
        // Nothing more is readable until the watermark moves.
        let waiting = tokio::spawn(async move {
            let next = early.next().await.unwrap().unwrap();
            (next, early)
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        file.write_all(b"world").unwrap();
        writer.advance(11);
        let (next, mut early) = waiting.await.unwrap();
        assert_eq!(next, &b"world"[..]);
        // Bytes written but not yet vouched for are not read.
        file.write_all(b"!").unwrap();
        let late = writer.reader();
        writer.complete(12);
        assert_eq!(early.next().await.unwrap().unwrap(), &b"!"[..]);
        assert!(early.next().await.is_none());
        let all: Vec<Bytes> = late.stream().map(|r| r.unwrap()).collect().await;
        assert_eq!(all.concat(), b"hello world!");
    }

    #[tokio::test]
    async fn a_refused_or_abandoned_fill_breaks_every_stream_before_its_end() {
        for refuse in [true, false] {
            let (_dir, mut file) = temp();
            file.write_all(b"part").unwrap();
            let writer = GrowingWriter::new(file.try_clone().unwrap(), 4, Some(10));
            let reader = writer.reader();
            let ended = tokio::spawn(writer.reader().ended());
            if refuse {
                writer.fail("invalid module zip".into());
            } else {
                drop(writer);
            }
            let got: Vec<std::io::Result<Bytes>> = reader.stream().collect().await;
            assert_eq!(got.len(), 1, "no bytes once refused: {got:?}");
            let err = got[0].as_ref().unwrap_err().to_string();
            let Ended::Failed(why) = ended.await.unwrap() else {
                panic!("ended without failing")
            };
            assert_eq!(err, why);
            if refuse {
                assert_eq!(why, "invalid module zip");
            }
        }
    }
}
