//! A cache file's bytes as an HTTP body, read in chunks at their offsets: on the serving thread
//! when the page cache holds them (`preadv2` with `RWF_NOWAIT`, which refuses rather than wait
//! for the disk), on the blocking pool when it would have to wait. A cache hit of a large zip
//! whose pages are in memory then costs no hop between threads per chunk, as a file server's
//! read from the page cache does not; a cold one never stalls the thread that serves others.

use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use rustix::io::{Errno, ReadWriteFlags};
use tokio::task::JoinHandle;

use crate::body::BoxError;

/// Bytes per read: what one hop to the blocking pool fetches when the page cache has not.
const CHUNK: usize = 512 * 1024;

/// The `len` bytes of an open file, from its start.
#[derive(Debug)]
pub struct FileBody {
    file: Arc<std::fs::File>,
    offset: u64,
    left: u64,
    pending: Option<JoinHandle<io::Result<Vec<u8>>>>,
    /// Whether `RWF_NOWAIT` reads are worth trying (the kernel and file system take them).
    nowait: bool,
}

impl FileBody {
    pub fn new(file: std::fs::File, len: u64) -> FileBody {
        FileBody {
            file: Arc::new(file),
            offset: 0,
            left: len,
            pending: None,
            nowait: true,
        }
    }

    fn chunk(&mut self, mut data: Vec<u8>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if data.is_empty() {
            let left = self.left;
            return self.fail(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("cache file ended {left} bytes before its recorded length"),
            ));
        }
        let n = (data.len() as u64).min(self.left);
        self.offset += n;
        self.left -= n;
        data.truncate(n as usize);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(data)))))
    }

    /// Ends the body with `err`: nothing more is read.
    fn fail(&mut self, err: impl Into<BoxError>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.left = 0;
        Poll::Ready(Some(Err(err.into())))
    }
}

/// One read of up to `want` bytes at `offset`, waiting for the disk if it must.
fn read_at(file: &std::fs::File, offset: u64, want: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; want];
    let n = loop {
        match file.read_at(&mut buf, offset) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => break r?,
        }
    };
    buf.truncate(n);
    Ok(buf)
}

/// What a read that must not wait found at `offset`: bytes, or `None` when they are not in
/// memory (or the kernel cannot say: then `nowait` is turned off for this body).
fn read_cached(
    file: &std::fs::File,
    offset: u64,
    want: usize,
    nowait: &mut bool,
) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; want];
    let got = rustix::io::preadv2(
        file,
        &mut [io::IoSliceMut::new(&mut buf)],
        offset,
        ReadWriteFlags::NOWAIT,
    );
    match got {
        // 0 is the end of the file, or nothing cached at `offset`: the blocking read tells.
        Ok(0) => Ok(None),
        Ok(n) => {
            buf.truncate(n);
            Ok(Some(buf))
        }
        Err(Errno::AGAIN | Errno::INTR) => Ok(None),
        Err(Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => {
            *nowait = false;
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

impl hyper::body::Body for FileBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(task) = &mut this.pending {
            let done = ready!(Pin::new(task).poll(cx));
            this.pending = None;
            return match done {
                Ok(Ok(data)) => this.chunk(data),
                Ok(Err(e)) => this.fail(e),
                Err(e) => this.fail(e),
            };
        }
        if this.left == 0 {
            return Poll::Ready(None);
        }
        let want = this.left.min(CHUNK as u64) as usize;
        if this.nowait {
            match read_cached(&this.file, this.offset, want, &mut this.nowait) {
                Ok(Some(data)) => return this.chunk(data),
                Ok(None) => {}
                Err(e) => return this.fail(e),
            }
        }
        let (file, offset) = (this.file.clone(), this.offset);
        this.pending = Some(tokio::task::spawn_blocking(move || {
            read_at(&file, offset, want)
        }));
        // Polled at once, so that the task's completion wakes this body.
        Pin::new(this).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0 && self.pending.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use hyper::body::Body;

    #[tokio::test]
    async fn a_file_is_read_whole_in_chunks_from_memory_or_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..(CHUNK * 2 + 12_345))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();
        for nowait in [true, false] {
            let mut body = FileBody::new(std::fs::File::open(&path).unwrap(), data.len() as u64);
            body.nowait = nowait;
            assert_eq!(body.size_hint().exact(), Some(data.len() as u64));
            let mut got = Vec::new();
            let mut frames = 0;
            while let Some(frame) = body.frame().await {
                got.extend_from_slice(&frame.unwrap().into_data().unwrap());
                frames += 1;
            }
            assert_eq!(got, data, "nowait {nowait}");
            assert_eq!(frames, 3, "nowait {nowait}");
            assert!(body.is_end_stream());
        }
    }

    #[tokio::test]
    async fn a_file_shorter_than_its_recorded_length_ends_the_body_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"short").unwrap();
        let mut body = FileBody::new(std::fs::File::open(&path).unwrap(), 100);
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"short");
        let err = body.frame().await.unwrap().unwrap_err().to_string();
        assert!(err.contains("95 bytes before its recorded length"), "{err}");
        assert!(body.frame().await.is_none());
    }
}
