//! A request body kept (up to a limit) as it streams upstream, so a retry can
//! send it again and a mirror can send a copy. Only the attempt in progress
//! pulls from the client; a retry replays what was kept, then continues.
//! The external authorizer's check may read the body's start ahead of any
//! attempt ([`Tap::read_ahead`]); the first attempt then replays it.

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::client_body::{ClientBody, ClientBodyError};
use super::progress::RequestProgress;
use super::stalled::CutSignal;

/// Most request body bytes kept for retries and mirrors (Envoy's default
/// buffer limit); a longer body streams on but cannot be retried or mirrored.
pub const TAP_LIMIT: usize = 1 << 20;

/// Why a tapped body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The client's body failed.
    #[error("{0}")]
    Source(ClientBodyError),
    /// Part of the body was dropped over the limit before this reader got it.
    #[error("request body longer than the retry buffer")]
    Overflowed,
}

struct State {
    source: ClientBody,
    frames: Vec<Frame<Bytes>>,
    /// Absolute index of `frames[0]`.
    base: usize,
    buffered: usize,
    overflowed: bool,
    done: bool,
    released: bool,
    exact_len: Option<u64>,
    progress: Rc<RequestProgress>,
    waiters: Vec<Waker>,
}

/// Shared handle on a tapped body.
#[derive(Clone)]
pub struct Tap(Rc<RefCell<State>>);

fn copy(frame: &Frame<Bytes>) -> Frame<Bytes> {
    match (frame.data_ref(), frame.trailers_ref()) {
        (Some(data), _) => Frame::data(data.clone()),
        (None, Some(trailers)) => Frame::trailers(trailers.clone()),
        (None, None) => Frame::data(Bytes::new()),
    }
}

impl Tap {
    /// Taps `source`; its progress is reported to `progress`.
    pub fn new(source: ClientBody, progress: Rc<RequestProgress>) -> Self {
        let done = source.is_end_stream();
        if done {
            progress.end();
        }
        Self(Rc::new(RefCell::new(State {
            exact_len: source.size_hint().exact(),
            source,
            frames: Vec::new(),
            base: 0,
            buffered: 0,
            overflowed: false,
            done,
            released: false,
            progress,
            waiters: Vec::new(),
        })))
    }

    /// A reader for one attempt, starting at the beginning.
    pub fn reader(&self) -> TapReader {
        TapReader {
            tap: self.0.clone(),
            index: 0,
        }
    }

    /// Whether the body can be sent again from the start.
    pub fn replayable(&self) -> bool {
        let state = self.0.borrow();
        !state.overflowed
    }

    /// The request is over: wakes copies still waiting for a body that will
    /// not come.
    pub fn release(&self) {
        let mut state = self.0.borrow_mut();
        state.released = true;
        state.waiters.drain(..).for_each(Waker::wake);
    }

    /// Reads the body ahead of any attempt, for an external authorizer
    /// (`includeRequestBodyInCheck`): until it ends or `until(kept bytes)`
    /// says enough. Returns what was kept, at most `limit` bytes of it, and
    /// the whole length kept (longer than `limit`: the body was cut). The
    /// frames read stay kept, whatever the tap's own limit, so the first
    /// attempt sends them before the rest; memory is bounded by where
    /// `until` stops plus one frame.
    ///
    /// # Errors
    /// The client's body failed (recorded in the progress, as an attempt
    /// reading it would).
    pub async fn read_ahead(
        &self,
        limit: usize,
        until: impl Fn(usize) -> bool,
    ) -> Result<(Bytes, usize), ClientBodyError> {
        std::future::poll_fn(|cx| {
            let mut state = self.0.borrow_mut();
            while !state.done && !until(state.buffered) {
                match Pin::new(&mut state.source).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => state.keep_ahead(frame),
                    Poll::Ready(None) => state.finish(),
                    Poll::Ready(Some(Err(e))) => {
                        state.progress.fail(&e);
                        return Poll::Ready(Err(e));
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            Poll::Ready(Ok(()))
        })
        .await?;
        let state = self.0.borrow();
        let mut body = bytes::BytesMut::with_capacity(state.buffered.min(limit));
        for data in state.frames.iter().filter_map(Frame::data_ref) {
            let room = limit - body.len();
            body.extend_from_slice(&data[..data.len().min(room)]);
        }
        Ok((body.freeze(), state.buffered))
    }

    /// Nothing will replay the body (no retry, no mirror): frames read
    /// from now on pass through unkept; those read ahead stay until the
    /// request ends.
    pub fn stop_keeping(&self) {
        self.0.borrow_mut().overflowed = true;
    }

    /// How far the body has got.
    pub fn progress(&self) -> Rc<RequestProgress> {
        self.0.borrow().progress.clone()
    }

    /// [`ClientBody::cut_signal`] of the tapped body.
    pub fn cut_signal(&self) -> Option<CutSignal> {
        self.0.borrow().source.cut_signal()
    }

    /// The whole body, once the attempts have read it; `None` if it was
    /// longer than the limit or the request ended before it was read.
    pub async fn whole_body(&self) -> Option<Bytes> {
        std::future::poll_fn(|cx| {
            let mut state = self.0.borrow_mut();
            if state.overflowed || (state.released && !state.done) {
                return Poll::Ready(None);
            }
            if !state.done {
                state.waiters.push(cx.waker().clone());
                return Poll::Pending;
            }
            let mut body = bytes::BytesMut::with_capacity(state.buffered);
            for frame in &state.frames {
                if let Some(data) = frame.data_ref() {
                    body.extend_from_slice(data);
                }
            }
            Poll::Ready(Some(body.freeze()))
        })
        .await
    }
}

/// One attempt's view of the body.
pub struct TapReader {
    tap: Rc<RefCell<State>>,
    index: usize,
}

impl TapReader {
    /// [`ClientBody::poll_stalled`] on the tapped body while it is still
    /// arriving, the failure recorded in the progress.
    pub fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.tap.borrow_mut();
        if state.done {
            return Poll::Pending;
        }
        match state.source.poll_stalled(cx) {
            Poll::Ready(error) => {
                state.progress.fail(&error);
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl TapReader {
    /// Whether its next frame would be read from the client's body: the
    /// tap holds nothing past this reader's position and the body has not
    /// ended.
    pub fn reads_client_next(&self) -> bool {
        let state = self.tap.borrow();
        !state.done && self.index >= state.base + state.frames.len()
    }
}

impl Body for TapReader {
    type Data = Bytes;
    type Error = TapError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, TapError>>> {
        let this = self.get_mut();
        let mut state = this.tap.borrow_mut();
        if this.index < state.base {
            return Poll::Ready(Some(Err(TapError::Overflowed)));
        }
        if let Some(frame) = state.frames.get(this.index - state.base) {
            let frame = copy(frame);
            this.index += 1;
            return Poll::Ready(Some(Ok(frame)));
        }
        if state.done {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut state.source).poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                this.index += 1;
                state.keep(&frame);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                state.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                state.progress.fail(&e);
                Poll::Ready(Some(Err(TapError::Source(e))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        let state = self.tap.borrow();
        state.done && self.index >= state.base + state.frames.len()
    }

    fn size_hint(&self) -> SizeHint {
        match self.tap.borrow().exact_len {
            Some(len) => SizeHint::with_exact(len),
            None => SizeHint::default(),
        }
    }
}

impl State {
    fn keep(&mut self, frame: &Frame<Bytes>) {
        let len = frame.data_ref().map_or(0, Bytes::len);
        self.progress.add(frame.data_ref().map_or(&[][..], |d| d));
        if self.source.is_end_stream() {
            self.done = true;
        }
        if self.overflowed {
            self.base += 1;
        } else if self.buffered + len > TAP_LIMIT {
            self.overflowed = true;
            self.base += self.frames.len() + 1;
            self.frames = Vec::new();
        } else {
            self.buffered += len;
            self.frames.push(copy(frame));
        }
        if self.done {
            self.progress.end();
            self.waiters.drain(..).for_each(Waker::wake);
        }
    }

    /// Keeps a frame read ahead of every attempt: nothing has read it yet,
    /// so it is kept even past the tap's limit (no reader may lose it).
    fn keep_ahead(&mut self, frame: Frame<Bytes>) {
        let len = frame.data_ref().map_or(0, Bytes::len);
        self.progress.add(frame.data_ref().map_or(&[][..], |d| d));
        if self.source.is_end_stream() {
            self.finish();
        }
        self.buffered += len;
        self.frames.push(frame);
    }

    fn finish(&mut self) {
        self.done = true;
        self.progress.end();
        self.waiters.drain(..).for_each(Waker::wake);
    }
}
