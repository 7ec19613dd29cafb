//! Counting the messages of a gRPC body as its bytes pass, for Istio's
//! `istio_request_messages_total` and `istio_response_messages_total`.

/// The messages of a gRPC body seen so far: each a flag byte and a 4-byte
/// big-endian length, then that many bytes (gRPC over HTTP/2's
/// Length-Prefixed-Message), counted when its flag byte passes, as Envoy's
/// `grpc_stats` filter counts frames (`Grpc::FrameInspector`). Fed any
/// other body it counts nonsense nobody reads; it never buffers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GrpcMessages {
    /// Messages begun.
    count: u64,
    /// Bytes of the current prefix read (0 between messages, up to 4).
    prefix_read: u8,
    /// The length read so far from the current prefix.
    length: u32,
    /// Bytes of the current message still to pass.
    left: u64,
}

impl GrpcMessages {
    /// Messages begun so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Reads the next `data` of the body.
    pub fn feed(&mut self, mut data: &[u8]) {
        while let Some((&byte, rest)) = data.split_first() {
            if self.left > 0 {
                let n = self.left.min(data.len() as u64);
                self.left -= n;
                data = &data[n as usize..];
                continue;
            }
            if self.prefix_read == 0 {
                self.count += 1;
            } else {
                self.length = (self.length << 8) | u32::from(byte);
            }
            self.prefix_read += 1;
            if self.prefix_read == 5 {
                self.left = u64::from(self.length);
                self.prefix_read = 0;
                self.length = 0;
            }
            data = rest;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: usize) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend((len as u32).to_be_bytes());
        bytes.extend(vec![7; len]);
        bytes
    }

    #[test]
    fn messages_are_counted_however_the_body_is_cut() {
        let body: Vec<u8> = [message(3), message(0), message(300), message(1)].concat();
        for cut in [1, 2, 4, 5, 6, 7, 64, body.len()] {
            let mut counted = GrpcMessages::default();
            for chunk in body.chunks(cut) {
                counted.feed(chunk);
            }
            assert_eq!(counted.count(), 4, "chunks of {cut}");
            assert_eq!(
                counted,
                GrpcMessages {
                    count: 4,
                    ..Default::default()
                }
            );
        }
        let mut empty = GrpcMessages::default();
        empty.feed(&[]);
        assert_eq!(empty.count(), 0);
    }
}
